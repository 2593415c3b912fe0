// Atomic file replacement through mkstemp temporaries.
#include "svcca/io/atomic_file.h"

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace svcca {
namespace detail {
namespace {

// The process umask without changing it (umask(2) can only be read by setting it, which races
// with other threads creating files): Linux reports it in /proc/self/status; 022 otherwise.
mode_t current_umask() {
  static const mode_t mask = [] {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("Umask:", 0) == 0)
        return static_cast<mode_t>(std::strtoul(line.c_str() + 6, nullptr, 8));
    }
    return static_cast<mode_t>(022);
  }();
  return mask;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

}  // namespace

TempFile::TempFile(const char* fn, std::string path) : fn_(fn), path_(std::move(path)) {
  TORCH_CHECK_VALUE(!path_.empty(), fn_, ": path must name a file, but got an empty path");
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string() : path_.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? path_ : path_.substr(slash + 1);
  TORCH_CHECK_VALUE(!name.empty() && name != "." && name != "..", fn_,
                    ": path must name a file, but \"", path_, "\" names a directory");
  std::string pattern = dir + "." + name + ".tmp.XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  fd_ = ::mkstemp(buf.data());
  const int err = errno;
  TORCH_CHECK(fd_ >= 0, fn_,
              ": path must be in a writable directory, but creating a temporary "
              "file beside \"",
              path_, "\" failed: ", errno_text(err));
  temp_.assign(buf.data());
}

TempFile::~TempFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void TempFile::write(const void* data, size_t size) {
  TORCH_INTERNAL_ASSERT(fd_ >= 0, "TempFile::write after close");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t w = ::write(fd_, p, size);
    if (w < 0 && errno == EINTR) continue;
    const int err = errno;
    TORCH_CHECK(w > 0, fn_, ": path must be writable, but writing \"", temp_, "\" (for \"", path_,
                "\") failed: ", errno_text(err));
    p += w;
    size -= static_cast<size_t>(w);
  }
}

void TempFile::close() {
  if (fd_ < 0) return;
  const int rc = ::close(fd_);
  const int err = errno;
  fd_ = -1;
  TORCH_CHECK(rc == 0, fn_, ": path must be writable, but closing \"", temp_, "\" (for \"", path_,
              "\") failed: ", errno_text(err));
}

void TempFile::commit() {
  // On disk before the rename, so that a crash leaves the old file or the whole new one.
  if (fd_ >= 0 && ::fsync(fd_) != 0) {
    const int err = errno;
    TORCH_CHECK(false, fn_, ": path must be writable, but syncing \"", temp_, "\" (for \"", path_,
                "\") failed: ", errno_text(err));
  }
  close();
  // mkstemp creates 0600; give the file what open(O_CREAT, 0666) would have.
  ::chmod(temp_.c_str(), 0666 & ~current_umask());
  const int rc = std::rename(temp_.c_str(), path_.c_str());
  const int err = errno;
  TORCH_CHECK(rc == 0, fn_, ": path must be writable, but renaming the temporary \"", temp_,
              "\" to \"", path_, "\" failed: ", errno_text(err));
  committed_ = true;
}

void write_file_atomically(const char* fn, const std::string& path, const void* data, size_t size) {
  TempFile tmp(fn, path);
  tmp.write(data, size);
  tmp.commit();
}

}  // namespace detail
}  // namespace svcca
