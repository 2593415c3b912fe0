// Tests of the streaming accumulators' hardening (issue 12): scale invariance of streamed moments
// (power-of-two units, file format 2), validated states and state files, unique temporaries for
// concurrent saves, and thread safety.
#include <ATen/ATen.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "support/support.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"
#include "svcca/stream/covariance_accumulator.h"
#include "svcca/stream/minibatch_cka.h"
#include "svcca/stream/state_file.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

class StateValidationTest : public testing::SeedingFixture {};

using State = std::map<std::string, at::Tensor>;

struct Pair {
  at::Tensor x, y;
};

// x: [n, 6] with a mean offset, y: [n, 5] correlated with x (from orthogonalized seeds: CCA is
// well conditioned).
Pair make_pair(int64_t n) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor q = std::get<0>(at::linalg_qr(at::randn({n, 11}, o)));
  at::Tensor x = q.narrow(1, 0, 6) * at::linspace(1.0, 3.0, 6, o) + 5.0;
  at::Tensor y = at::mm(q.narrow(1, 0, 4), at::randn({4, 5}, o)) + q.narrow(1, 6, 5) * 0.5 - 2.0;
  return {x, y};
}

CovarianceAccumulator stream(const at::Tensor& x, const at::Tensor& y, int64_t batch,
                             CovarianceAccumulatorOptions options = {}) {
  CovarianceAccumulator acc(options);
  for (int64_t s = 0; s < x.size(0); s += batch) {
    const int64_t b = std::min(batch, x.size(0) - s);
    acc.update(x.narrow(0, s, b), y.narrow(0, s, b));
  }
  return acc;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "svcca_state_" + std::to_string(::getpid()) + "_" + name;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Entries of `dir` whose name contains `part`.
std::vector<std::string> entries_with(const std::string& dir, const std::string& part) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.find(part) != std::string::npos) out.push_back(name);
  }
  ::closedir(d);
  return out;
}

// ---- Scale -------------------------------------------------------------------------------------

// Every measure of the accumulator is invariant to a layer's scale: data at 1e-300 ... 1e300
// gives the numbers of unscaled data (before: inf co-moments, "all features constant", CKA 0).
TEST_F(StateValidationTest, ScaledDataGivesTheUnscaledResults) {
  auto d = make_pair(240);
  auto ref = stream(d.x, d.y, 40);
  for (double s : {1e-300, 1e-200, 1e-150, 1e150, 1e200, 1e300}) {
    SCOPED_TRACE(::testing::Message() << "scale " << s);
    for (bool both : {false, true}) {
      auto acc = stream(d.x * s, both ? d.y * (1.0 / s) : d.y, 40);
      EXPECT_ALLCLOSE(acc.cca().correlations, ref.cca().correlations, tol::kDecomp64);
      EXPECT_ALLCLOSE(acc.svcca().score, ref.svcca().score, tol::kDecomp64);
      EXPECT_ALLCLOSE(acc.pwcca().score, ref.pwcca().score, tol::kDecomp64);
      EXPECT_ALLCLOSE(acc.linear_cka(), ref.linear_cka(), tol::kDecomp64);
      EXPECT_ALLCLOSE(acc.linear_cka(), linear_cka(d.x, d.y), tol::kDecomp64);
      EXPECT_NE(acc.scales()[0], 1.0);
    }
  }
  // Ordinary data keeps scale 1 (bitwise the moments it always had).
  EXPECT_EQ(ref.scales(), std::vector<double>({1.0, 1.0}));
  EXPECT_TRUE(at::equal(ref.state().at("comoment.0"), ref.unscaled_state().at("comoment.0")));
}

// Canonical weights come back in data units: x * 2^700 (exact) has the weights of x / 2^700.
TEST_F(StateValidationTest, CcaWeightsOfScaledDataAreInDataUnits) {
  auto d = make_pair(200);
  const double s = std::ldexp(1.0, 700);
  auto ref = stream(d.x, d.y, 50);
  auto acc = stream(d.x * s, d.y * (1.0 / s), 50);
  ASSERT_NE(acc.scales()[0], 1.0);
  auto r = ref.cca(), a = acc.cca();
  EXPECT_ALLCLOSE(a.x_weights * s, r.x_weights, tol::kDecomp64);
  EXPECT_ALLCLOSE(a.y_weights * (1.0 / s), r.y_weights, tol::kDecomp64);
  EXPECT_ALLCLOSE(a.x_weights, cca(d.x * s, d.y * (1.0 / s)).x_weights, tol::kDecomp64);
}

// A larger batch after smaller ones rescales the stored moments (and a batch of zeros has no
// unit of its own): streamed equals one batch, for a float32 accumulator too.
TEST_F(StateValidationTest, GrowingMagnitudesRescaleTheStoredMoments) {
  auto d = make_pair(240);
  at::Tensor rows = at::ones({240, 1}, at::kDouble);
  rows.narrow(0, 0, 40).fill_(0.0);      // first batch: zeros
  rows.narrow(0, 40, 80).fill_(1e-250);  // tiny, then huge
  rows.narrow(0, 120, 120).fill_(1e250);
  at::Tensor x = d.x * rows, y = d.y * rows;
  auto streamed = stream(x, y, 40);
  CovarianceAccumulator whole;
  whole.update(x, y);
  EXPECT_ALLCLOSE(streamed.cca().correlations, whole.cca().correlations, tol::kDecomp64);
  EXPECT_ALLCLOSE(streamed.linear_cka(), whole.linear_cka(), tol::kDecomp64);
  EXPECT_EQ(streamed.scales(), whole.scales());

  CovarianceAccumulatorOptions f32;
  f32.dtype = at::kFloat;
  auto small = stream(d.x.to(at::kFloat), d.y.to(at::kFloat), 60, f32);
  auto big = stream(d.x.to(at::kFloat) * 1e30f, d.y.to(at::kFloat) * 1e-30f, 60, f32);
  EXPECT_ALLCLOSE(big.cca().correlations, small.cca().correlations, tol::kFloat32);
  EXPECT_ALLCLOSE(big.linear_cka(), small.linear_cka(), tol::kFloat32);
}

TEST_F(StateValidationTest, MergeAndStateRoundTripCarryTheScales) {
  auto d = make_pair(200);
  auto ref = stream(d.x, d.y, 50);
  at::Tensor x = d.x * 1e200, y = d.y * 1e-200;
  auto a = stream(x.narrow(0, 0, 70), y.narrow(0, 0, 70), 50);
  auto b = stream(x.narrow(0, 70, 130) * 1e50, y.narrow(0, 70, 130), 50);  // another unit
  auto b_ref = stream(x.narrow(0, 70, 130), y.narrow(0, 70, 130), 50);
  CovarianceAccumulator merged = a;
  merged.merge(b_ref);
  EXPECT_ALLCLOSE(merged.cca().correlations, ref.cca().correlations, tol::kDecomp64);
  merged = a;
  merged.merge(b);
  CovarianceAccumulator whole;
  whole.update(at::cat({x.narrow(0, 0, 70), x.narrow(0, 70, 130) * 1e50}), y);
  EXPECT_ALLCLOSE(merged.linear_cka(), whole.linear_cka(), tol::kDecomp64);
  EXPECT_EQ(merged.scales(), whole.scales());

  CovarianceAccumulator restored;
  restored.set_state(merged.state());
  EXPECT_TRUE(at::equal(restored.cca().correlations, merged.cca().correlations));
  const std::string path = temp_path("scaled.svst");
  merged.save(path);
  auto loaded = CovarianceAccumulator::load(path);
  EXPECT_EQ(loaded.scales(), merged.scales());
  EXPECT_TRUE(at::equal(loaded.linear_cka(), merged.linear_cka()));
  std::remove(path.c_str());
}

// Files of format 1 (no scales) still load, as scale 1.
TEST_F(StateValidationTest, FormatOneFilesStillLoad) {
  auto d = make_pair(100);
  auto acc = stream(d.x, d.y, 30);
  auto st = acc.state();
  for (const char* k : {"scale.0", "scale.1"}) st.erase(k);
  auto payload = detail::make_payload("covariance");
  payload.insert(std::string("layers"), c10::List<std::string>({"x", "y"}));
  payload.insert(std::string("pairs"), c10::List<int64_t>({0, 1}));
  payload.insert(std::string("dtype"), std::string("Double"));
  detail::put_state(payload, st);
  const std::string path = temp_path("v1.svst");
  detail::save_stream_file("test", path, payload);
  auto bytes = read_bytes(path);
  ASSERT_EQ(bytes[8], 2);
  bytes[8] = 1;  // the version lies outside the checksummed payload
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto loaded = CovarianceAccumulator::load(path);
  EXPECT_EQ(loaded.scales(), std::vector<double>({1.0, 1.0}));
  EXPECT_TRUE(at::equal(loaded.cca().correlations, acc.cca().correlations));
  bytes[8] = 3;
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(path),
                     "must hold format version 1 to 2, but \"" + path + "\" has version 3");
  std::remove(path.c_str());
}

// ---- Validated states --------------------------------------------------------------------------

TEST_F(StateValidationTest, SetStateRefusesStatesThatNoDataGives) {
  auto d = make_pair(120);
  auto acc = stream(d.x, d.y, 40);
  const auto good = acc.state();
  CovarianceAccumulator target;
  target.update(d.x.narrow(0, 0, 10), d.y.narrow(0, 0, 10));
  const auto before = target.state();
  auto refused = [&](const std::function<void(std::map<std::string, at::Tensor>&)>& edit,
                     const std::string& message) {
    auto st = good;
    for (auto& kv : st) kv.second = kv.second.clone();
    edit(st);
    EXPECT_THROWS_WITH_TYPE(target.set_state(st), c10::ValueError, message);
    EXPECT_TRUE(at::equal(target.state().at("comoment.0"), before.at("comoment.0")));
    EXPECT_EQ(target.n(), 10);
  };
  // The example: a cross co-moment x1000 gave CKA 18911.6.
  refused([](State& s) { s["cross.0.1"].mul_(1000.0); },
          "state[\"cross.0.1\"] must satisfy the Cauchy-Schwarz inequality");
  // Within Cauchy-Schwarz entry by entry, yet linear CKA above 1.
  refused(
      [](State& s) {
        at::Tensor c = s["comoment.0"], e = s["comoment.1"];
        s["cross.0.1"] = at::outer(c.diagonal().sqrt(), e.diagonal().sqrt()) * 0.999;
      },
      "state[\"cross.0.1\"] must satisfy ||C||_F^2 <= ||M_a||_F ||M_b||_F");
  refused(
      [](State& s) {
        at::Tensor m = s["comoment.1"];
        m[0][1] = 2.0 * (m[0][0] * m[1][1]).sqrt();
      },
      "state[\"comoment.1\"] must satisfy the Cauchy-Schwarz inequality");
  refused([](State& s) { s["comoment.0"][2][2] = -1.0; },
          "state[\"comoment.0\"] must have each diagonal entry");
  refused([](State& s) { s["comoment.0"].mul_(1e6); },
          "state[\"comoment.0\"] must have each diagonal entry");
  refused([](State& s) { s["comoment.1"][3][3] = std::nan(""); },
          "state[\"comoment.1\"] must be finite, but it holds 1 NaN and 0 Inf (first at (3, 3))");
  refused([](State& s) { s["mean.0"][1] = std::numeric_limits<double>::infinity(); },
          "state[\"mean.0\"] must be finite, but it holds 0 NaN and 1 Inf");
  refused([](State& s) { s["mean.0"][1] = 1e3; },
          "state[\"mean.0\"] must lie within each feature's [min, max], but feature 1");
  refused([](State& s) { s["min.1"][2] = s["max.1"][2].item<double>() + 1.0; },
          "state[\"min.1\"] must not exceed state[\"max.1\"], but feature 2");
  refused([](State& s) { s["scale.0"].fill_(3.0); },
          "state[\"scale.0\"] must be a finite positive power of two, but got 3");
  refused([](State& s) { s.erase("scale.1"); },
          "state must hold a \"scale.l\" entry for every layer or for none, but got 1 for 2");
  refused([](State& s) { s["n"].fill_(2.5); }, "state[\"n\"] must be a positive integer");
  // The same state untouched is accepted; so is one without scales (format 1).
  target.set_state(good);
  EXPECT_TRUE(at::equal(target.cca().correlations, acc.cca().correlations));
}

// A checksum-valid crafted file is refused with the file and the entry named.
TEST_F(StateValidationTest, LoadRefusesCraftedFilesNamingFileAndEntry) {
  auto d = make_pair(80);
  auto acc = stream(d.x, d.y, 40);
  auto st = acc.state();
  st["cross.0.1"] = st["cross.0.1"] * 1000.0;
  auto payload = detail::make_payload("covariance");
  payload.insert(std::string("layers"), c10::List<std::string>({"x", "y"}));
  payload.insert(std::string("pairs"), c10::List<int64_t>({0, 1}));
  payload.insert(std::string("dtype"), std::string("Double"));
  detail::put_state(payload, st);
  const std::string path = temp_path("crafted.svst");
  detail::save_stream_file("test", path, payload);
  EXPECT_THROWS_WITH_TYPE(CovarianceAccumulator::load(path), c10::ValueError,
                          "CovarianceAccumulator::load: state[\"cross.0.1\"] of \"" + path +
                              "\" must satisfy the Cauchy-Schwarz inequality");

  MinibatchCkaAccumulator mb;
  mb.update(d.x, d.y);
  auto ms = mb.state();
  ms["hsic_xy"] = ms["hsic_xy"] * 1e6;  // the example: CKA -55349
  auto mp = detail::make_payload("minibatch_cka");
  mp.insert(std::string("kernel"), std::string("linear"));
  mp.insert(std::string("threshold"), 1.0);
  mp.insert(std::string("n_features"), c10::List<int64_t>({6, 5}));
  mp.insert(std::string("dtypes"), c10::List<std::string>({"Double", "Double"}));
  detail::put_state(mp, ms);
  detail::save_stream_file("test", path, mp);
  EXPECT_THROWS_WITH(MinibatchCkaAccumulator::load(path),
                     "state[\"hsic_xy\"] of \"" + path + "\" must satisfy hsic_xy^2 <= hsic_xx");
  std::remove(path.c_str());
}

TEST_F(StateValidationTest, MinibatchCkaStateIsValidatedAndScaleInvariant) {
  auto d = make_pair(200);
  MinibatchCkaAccumulator ref, scaled, rbf_ref, rbf_scaled;
  MinibatchCkaOptions rbf;
  rbf.kernel = CkaKernel::kRbf;
  rbf.sigma = 2.0;
  MinibatchCkaOptions rbf_big = rbf;
  rbf_big.sigma = 2.0 * 1e200;
  rbf_ref = MinibatchCkaAccumulator(rbf);
  rbf_scaled = MinibatchCkaAccumulator(rbf_big);
  for (int64_t s = 0; s < 200; s += 50) {
    at::Tensor xb = d.x.narrow(0, s, 50), yb = d.y.narrow(0, s, 50);
    ref.update(xb, yb);
    scaled.update(xb * 1e200, yb * 1e-200);
    rbf_ref.update(xb, yb);
    rbf_scaled.update(xb * 1e200, yb * 1e200);
  }
  EXPECT_ALLCLOSE(scaled.cka(), ref.cka(), tol::kDecomp64);
  EXPECT_ALLCLOSE(rbf_scaled.cka(), rbf_ref.cka(), tol::kDecomp64);
  MinibatchCkaAccumulator restored;
  restored.set_state(scaled.state());
  EXPECT_TRUE(at::equal(restored.cka(), scaled.cka()));

  const auto good = ref.state();
  auto refused = [&](const std::string& key, double value, const std::string& message) {
    auto st = good;
    st[key] = at::scalar_tensor(value, at::kDouble);
    MinibatchCkaAccumulator target;
    EXPECT_THROWS_WITH_TYPE(target.set_state(st), c10::ValueError, message);
    EXPECT_EQ(target.n_batches(), 0);
  };
  refused("hsic_xy", good.at("hsic_xy").item<double>() * 1e6,
          "state[\"hsic_xy\"] must satisfy hsic_xy^2 <= hsic_xx hsic_yy");
  refused("hsic_xx", -1.0, "state[\"hsic_xx\"] must be >= 0");
  refused("hsic_yy", std::nan(""), "state[\"hsic_yy\"] must be finite, but got nan");
  refused("n", 3.0, "must be integers with n >= 4 n_batches >= 4");
  refused("scale_x", 0.3, "state[\"scale_x\"] must be a finite positive power of two");
}

// ---- Files -------------------------------------------------------------------------------------

TEST_F(StateValidationTest, LoadRefusesFoldersAndNonRegularFiles) {
  const std::string dir = temp_path("folder");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  EXPECT_THROWS_WITH_TYPE(
      CovarianceAccumulator::load(dir), c10::ValueError,
      "path must name an accumulator state file, but \"" + dir + "\" is a directory");
  EXPECT_THROWS_WITH(MinibatchCkaAccumulator::load(dir), "is a directory");
  const std::string fifo = temp_path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Would block forever reading; refused at once.
  EXPECT_THROWS_WITH(CovarianceAccumulator::load(fifo), "is not a regular file");
  ::unlink(fifo.c_str());
  // Saving onto a folder fails clearly and leaves no temporary behind.
  auto d = make_pair(20);
  auto acc = stream(d.x, d.y, 20);
  EXPECT_THROWS_WITH(acc.save(dir), "path must be writable, but renaming the temporary");
  EXPECT_EQ(entries_with(::testing::TempDir(),
                         "svcca_state_" + std::to_string(::getpid()) + "_folder.tmp."),
            std::vector<std::string>{});
  ::rmdir(dir.c_str());
}

// 8 threads saving to one path: before, each used "<path>.tmp.<pid>" and some renames failed.
TEST_F(StateValidationTest, ConcurrentSavesToOnePathAllSucceed) {
  const std::string dir = temp_path("saves");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  const std::string path = dir + "/state.svst";
  // A user's own file of the old temporary names is left alone.
  std::ofstream(path + ".tmp") << "mine";
  auto d = make_pair(60);
  auto acc = stream(d.x, d.y, 20);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        try {
          acc.save(path);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(at::equal(CovarianceAccumulator::load(path).linear_cka(), acc.linear_cka()));
  EXPECT_EQ(entries_with(dir, "tmp."), std::vector<std::string>{});
  std::ifstream mine(path + ".tmp");
  std::string content;
  mine >> content;
  EXPECT_EQ(content, "mine");
  // The file gets ordinary permissions (mkstemp makes 0600): those of a fresh file under the umask.
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  struct stat ref;
  ASSERT_EQ(::stat((path + ".tmp").c_str(), &ref), 0);
  EXPECT_EQ(st.st_mode & 0777, ref.st_mode & 0777);
  std::remove((path + ".tmp").c_str());
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
}

// ---- Threads -----------------------------------------------------------------------------------

// Before, 8 threads updating one accumulator gave a CCA off by ~1e-5 (torn in-place updates).
TEST_F(StateValidationTest, UpdatesAndMergesFromEightThreadsEqualOneThread) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({4000, 6}, o);
  at::Tensor y = x.narrow(1, 0, 5) + at::randn({4000, 5}, o);
  CovarianceAccumulator shared, merged;
  MinibatchCkaAccumulator mb_shared;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      CovarianceAccumulator own;
      for (int64_t s = t * 500; s < (t + 1) * 500; s += 10) {
        shared.update(x.narrow(0, s, 10), y.narrow(0, s, 10));
        own.update(x.narrow(0, s, 10), y.narrow(0, s, 10));
        mb_shared.update(x.narrow(0, s, 10), y.narrow(0, s, 10));
        if (s % 100 == 0) (void)shared.state();  // readers beside the writers
      }
      merged.merge(own);
    });
  }
  for (auto& t : threads) t.join();
  CovarianceAccumulator one;
  one.update(x, y);
  EXPECT_EQ(shared.n(), 4000);
  EXPECT_EQ(merged.n(), 4000);
  EXPECT_ALLCLOSE(shared.cca().correlations, one.cca().correlations, tol::kDecomp64);
  EXPECT_ALLCLOSE(merged.cca().correlations, one.cca().correlations, tol::kDecomp64);
  MinibatchCkaAccumulator mb_one;
  for (int64_t s = 0; s < 4000; s += 10) mb_one.update(x.narrow(0, s, 10), y.narrow(0, s, 10));
  EXPECT_EQ(mb_shared.n_batches(), 400);
  EXPECT_ALLCLOSE(mb_shared.cka(), mb_one.cka(), tol::kStreamed64);
}

// A copy is its own: updating the original does not change it (before, copies shared the
// tensors that update() writes in place, but not the row count).
TEST_F(StateValidationTest, CopiesAreDeep) {
  auto d = make_pair(100);
  auto acc = stream(d.x.narrow(0, 0, 50), d.y.narrow(0, 0, 50), 50);
  CovarianceAccumulator copy = acc;
  const at::Tensor before = copy.state().at("comoment.0");
  acc.update(d.x.narrow(0, 50, 50), d.y.narrow(0, 50, 50));
  EXPECT_TRUE(at::equal(copy.state().at("comoment.0"), before));
  EXPECT_EQ(copy.n(), 50);
  copy.merge(copy);  // the same rows twice: same covariance shape, n doubles
  EXPECT_EQ(copy.n(), 100);

  MinibatchCkaAccumulator mb;
  mb.update(d.x.narrow(0, 0, 50), d.y.narrow(0, 0, 50));
  MinibatchCkaAccumulator mb_copy = mb;
  const double h = mb_copy.hsic_xy().item<double>();
  mb.update(d.x.narrow(0, 50, 50) * 3.0, d.y.narrow(0, 50, 50));
  EXPECT_EQ(mb_copy.hsic_xy().item<double>(), h);
}

}  // namespace
}  // namespace svcca
