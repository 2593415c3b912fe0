// Atomic file replacement: write under a unique temporary name beside the target, then rename.
#pragma once

#include <cstddef>
#include <string>

namespace svcca {
namespace detail {

// A fresh file with a unique name beside `path` ("<dir>/.<name>.tmp.XXXXXX", made by mkstemp, so
// that concurrent writers of one path never share a temporary and no existing file is touched).
// commit() gives it the permissions a new file would get (0666 less the umask) and renames it to
// `path` (atomic on POSIX file systems: readers see the old file or the new one, never a mix);
// the destructor removes the temporary when commit() did not run (an error path). Throws
// c10::Error naming `fn` and `path` when the temporary cannot be created (a missing or read-only
// directory), written, or renamed (e.g. `path` is a directory).
//
//   detail::TempFile tmp("save", path);  tmp.write(data, size);  tmp.commit();
class TempFile {
 public:
  TempFile(const char* fn, std::string path);
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // The temporary's name (for writers that open files by name; they overwrite it in place).
  const std::string& temp_path() const { return temp_; }
  // Appends `size` bytes to the temporary (retries short writes and EINTR).
  void write(const void* data, size_t size);
  // Closes the temporary's descriptor (a writer that reopens it by name may call this first).
  void close();
  // Sets the permissions and renames the temporary onto the target.
  void commit();

 private:
  const char* fn_;
  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `size` bytes to `path` through a TempFile.
void write_file_atomically(const char* fn, const std::string& path, const void* data, size_t size);

}  // namespace detail
}  // namespace svcca
