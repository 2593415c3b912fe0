// Tests of svcca::TappedModule against the fixtures in models/fixtures (captures that Python's
// forward hooks saw on the same modules), plus selection, listing, autograd and error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/serialization/import.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support/support.h"
#include "svcca/capture/capture.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

std::string fixture(const std::string& file) {
  return std::string(SVCCA_MODELS_DIR) + "/fixtures/" + file;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "svcca_capture_" + name;
}

// What Python's forward hooks recorded (models/make_fixtures.py).
struct Expected {
  std::vector<c10::IValue> inputs;
  std::vector<std::string> names;
  std::vector<std::string> types;
  std::vector<at::Tensor> values;
  at::Tensor output;
};

Expected load_expected(const std::string& model) {
  torch::jit::Module m = torch::jit::load(fixture(model + "_expected.pt"));
  Expected e;
  for (const auto& v : m.attr("inputs").toListRef()) e.inputs.push_back(v.toTensor());
  for (const auto& v : m.attr("names").toListRef()) e.names.push_back(v.toStringRef());
  for (const auto& v : m.attr("types").toListRef()) e.types.push_back(v.toStringRef());
  for (const auto& v : m.attr("values").toListRef()) e.values.push_back(v.toTensor());
  e.output = m.attr("output").toTensor();
  return e;
}

at::Tensor param(const torch::jit::Module& m, const std::string& path, const std::string& attr) {
  torch::jit::Module sub = m;
  size_t start = 0;
  while (start < path.size()) {
    size_t dot = path.find('.', start);
    if (dot == std::string::npos) dot = path.size();
    sub = sub.attr(path.substr(start, dot - start)).toModule();
    start = dot + 1;
  }
  return sub.attr(attr).toTensor();
}

at::Tensor linear(const at::Tensor& x, const torch::jit::Module& m, const std::string& path) {
  return at::linear(x, param(m, path, "weight"), param(m, path, "bias"));
}

// ---- Against Python's forward hooks ------------------------------------------------------------

class HookFixtures : public ::testing::TestWithParam<std::string> {};

// torch.jit.trace flattens the nested tuples that submodules return ((a, (b, c)) -> (a, b, c)), so
// a traced model records "<path>:0", "<path>:1", "<path>:2" where the hooks saw "<path>:1:0", ...
void flatten_tuple_names(std::vector<std::string>& names) {
  std::map<std::string, int> next;
  std::string prev_path;
  for (auto& n : names) {
    auto colon = n.find(':');
    if (colon == std::string::npos) {
      prev_path.clear();
      continue;
    }
    const std::string path = n.substr(0, colon);
    if (path != prev_path) next[path] = 0;
    prev_path = path;
    n = path + ":" + std::to_string(next[path]++);
  }
}

TEST_P(HookFixtures, RecordsEqualPythonForwardHooks) {
  const std::string file = GetParam();
  const std::string model = file.substr(0, file.find('_'));
  Expected e = load_expected(model);
  if (file.find("traced") != std::string::npos) {
    flatten_tuple_names(e.names);
    // The tracer records nn.Identity as a method returning None (the input passes around it),
    // so a traced model has no output of `ident` to record.
    for (size_t i = e.names.size(); i-- > 0;) {
      if (e.names[i] == "ident") {
        e.names.erase(e.names.begin() + i);
        e.types.erase(e.types.begin() + i);
        e.values.erase(e.values.begin() + i);
      }
    }
  }
  TappedModule tapped = TappedModule::load(fixture(file + ".pt"));
  Capture cap = tapped.run(e.inputs);
  ASSERT_EQ(cap.records.size(), e.names.size());
  for (size_t i = 0; i < e.names.size(); ++i) {
    EXPECT_EQ(cap.records[i].name, e.names[i]) << "record " << i;
    EXPECT_EQ(tapped.layer_type(cap.records[i].name), e.types[i]) << e.names[i];
    EXPECT_TRUE(AllClose(cap.records[i].value, e.values[i], tol::kFloat32)) << e.names[i];
  }
  EXPECT_TRUE(AllClose(cap.output.toTensor(), e.output, tol::kFloat32));
  // forward itself is untouched and agrees with the tapped method.
  at::Tensor plain = tapped.module().forward(e.inputs).toTensor();
  EXPECT_TRUE(AllClose(cap.output.toTensor(), plain, tol::kClosedForm64));
}

INSTANTIATE_TEST_SUITE_P(Capture, HookFixtures,
                         ::testing::Values("seq_scripted", "seq_traced", "nested_scripted",
                                           "nested_traced", "resnet_scripted", "resnet_traced",
                                           "twice_scripted", "twice_traced", "tuple_scripted",
                                           "tuple_traced", "flow_scripted", "inplace_scripted",
                                           "inplace_traced", "loopwrite_scripted",
                                           "loopwrite_traced", "overload_scripted"));

// ---- Names, types, control flow
// ------------------------------------------------------------------

TEST(CaptureNames, SequentialAndNested) {
  EXPECT_EQ(TappedModule::load(fixture("seq_scripted.pt")).layer_names(),
            (std::vector<std::string>{"0", "1", "2", "3"}));
  // features.0 runs inside features; extra is called from helper(), not from forward.
  TappedModule nested = TappedModule::load(fixture("nested_scripted.pt"));
  EXPECT_EQ(nested.layer_names(),
            (std::vector<std::string>{"ident", "features.0.0", "features.0.1", "features.0",
                                      "features.1", "features", "extra", "head"}));
  EXPECT_EQ(nested.layer_type("features.0"), "Sequential");
  EXPECT_EQ(nested.layer_type("features.0.1"), "Tanh");
}

TEST(CaptureNames, SharedBlockClassGetsPerInstanceNames) {
  TappedModule r = TappedModule::load(fixture("resnet_traced.pt"));
  const auto& names = r.layer_names();
  for (const char* n : {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.downsample.0", "layer2.1.bn2",
                        "layer2.1", "fc"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_EQ(r.layer_type("layer2.0"), "BasicBlock");
  EXPECT_EQ(r.layer_type("layer2.0.downsample"), "Sequential");
}

TEST(CaptureFlow, ElseBranchAndLoop) {
  TappedModule flow = TappedModule::load(fixture("flow_scripted.pt"));
  Expected e = load_expected("flow");
  at::Tensor x = -e.inputs[0].toTensor();  // negative sum: the else branch
  Capture cap = flow.run({x});
  ASSERT_TRUE(cap.values("a").empty());
  ASSERT_EQ(cap.values("b").size(), 1u);
  const auto& m = flow.module();
  at::Tensor y = linear(x, m, "b");
  EXPECT_TRUE(AllClose(cap.values("b")[0], y, tol::kFloat32));
  y = at::tanh(linear(y, m, "blocks.0"));
  y = at::tanh(linear(y, m, "blocks.1"));
  std::vector<at::Tensor> loop = cap.values("loop");
  ASSERT_EQ(loop.size(), 3u);  // three iterations of a prim::Loop: three records, in order
  for (const auto& rec : loop) {
    at::Tensor out = linear(y, m, "loop");
    EXPECT_TRUE(AllClose(rec, out, tol::kFloat32));
    y = at::tanh(out);
  }
}

TEST(CaptureTwice, TwoRecordsInCallOrder) {
  TappedModule t = TappedModule::load(fixture("twice_scripted.pt"));
  at::Tensor x = load_expected("twice").inputs[0].toTensor();
  Capture cap = t.run({x});
  std::vector<at::Tensor> fc = cap.values("fc");
  ASSERT_EQ(fc.size(), 2u);
  at::Tensor first = linear(x, t.module(), "fc");
  EXPECT_TRUE(AllClose(fc[0], first, tol::kFloat32));
  EXPECT_TRUE(AllClose(fc[1], linear(at::relu(first), t.module(), "fc"), tol::kFloat32));
  auto firsts = cap.first_values();
  ASSERT_EQ(firsts.size(), 3u);  // fc, act, out
  EXPECT_EQ(firsts[0].first, "fc");
  EXPECT_TRUE(AllClose(firsts[0].second, fc[0], tol::kClosedForm64));
}

// ---- Captures never change afterwards --------------------------------------------------------

TEST(CaptureInPlace, ModuleOutputRewrittenInForward) {
  TappedModule t = TappedModule::load(fixture("inplace_scripted.pt"));
  at::Tensor x = load_expected("inplace").inputs[0].toTensor();
  Capture cap = t.run({x});
  // forward doubles fc's output in place, and the in-place ReLU rewrites bn's output.
  EXPECT_TRUE(AllClose(cap.values("fc")[0], linear(x, t.module(), "fc"), tol::kFloat32));
  EXPECT_TRUE((cap.values("bn")[0] < 0).any().item<bool>());
}

TEST(CaptureInPlace, CallerWritesToOutputAndInput) {
  TappedModule seq = TappedModule::load(fixture("seq_scripted.pt"));
  at::Tensor x = load_expected("seq").inputs[0].toTensor().clone();
  Capture cap = seq.run({x});
  at::Tensor last = cap.values("3")[0].clone();
  cap.output.toTensor().add_(100.0);  // the last layer's output is forward's output
  EXPECT_TRUE(AllClose(cap.values("3")[0], last, tol::kClosedForm64));

  TappedModule nested = TappedModule::load(fixture("nested_scripted.pt"));
  at::Tensor y = load_expected("nested").inputs[0].toTensor().clone();
  Capture cap2 = nested.run({y});
  at::Tensor ident = cap2.values("ident")[0].clone();  // Identity returns the input itself
  y.mul_(-3.0);
  EXPECT_TRUE(AllClose(cap2.values("ident")[0], ident, tol::kClosedForm64));
}

TEST(CaptureInPlace, OptimizerStepsDoNotChangeCaptures) {
  TappedModule seq = TappedModule::load(fixture("seq_scripted.pt"));
  at::Tensor x = load_expected("seq").inputs[0].toTensor();
  Capture cap = seq.run({x});
  std::vector<at::Tensor> before;
  for (const auto& r : cap.records) before.push_back(r.value.clone());
  {
    at::NoGradGuard g;
    for (const auto& p : seq.module().parameters()) p.add_(1.0);
  }
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(AllClose(cap.records[i].value, before[i], tol::kClosedForm64))
        << cap.records[i].name;
  }
}

TEST(CaptureInPlace, UnwrittenValuesAreSharedNotCopied) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  Capture cap = r.run(load_expected("resnet").inputs);
  // layer1's output is its last block's output: one tensor, recorded twice without a copy.
  EXPECT_EQ(cap.values("layer1")[0].data_ptr(), cap.values("layer1.1")[0].data_ptr());
  // bn1's output is rewritten by the in-place ReLU in forward; bn1's record must keep the values
  // before it (the ReLU then runs out of place in the tapped method, so no copy is needed).
  EXPECT_TRUE((cap.values("bn1")[0] < 0).any().item<bool>());
  EXPECT_FALSE((cap.values("relu")[0] < 0).any().item<bool>());
}

TEST(CaptureInPlace, EachLayerRecordedAloneEqualsHooks) {
  // Recording one layer switches only that layer's in-place rewrite out of place.
  for (const char* model : {"inplace", "resnet"}) {
    TappedModule t = TappedModule::load(fixture(std::string(model) + "_scripted.pt"));
    Expected e = load_expected(model);
    for (const auto& name : t.layer_names()) {
      Capture cap = t.run(e.inputs, {name});
      std::vector<at::Tensor> got = cap.values(name);
      std::vector<at::Tensor> want;
      for (size_t i = 0; i < e.names.size(); ++i) {
        if (e.names[i] == name) want.push_back(e.values[i]);
      }
      ASSERT_EQ(got.size(), want.size()) << model << " " << name;
      EXPECT_EQ(cap.records.size(), want.size()) << model << " " << name;
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_TRUE(AllClose(got[i], want[i], tol::kFloat32)) << model << " " << name;
      }
      EXPECT_TRUE(AllClose(cap.output.toTensor(), e.output, tol::kFloat32)) << model << " " << name;
    }
  }
}

// ---- Autograd ----------------------------------------------------------------------------------

TEST(CaptureAutograd, DetachedByDefault) {
  TappedModule t = TappedModule::load(fixture("nested_scripted.pt"));
  Capture cap = t.run({load_expected("nested").inputs[0]});
  for (const auto& r : cap.records) EXPECT_FALSE(r.value.requires_grad()) << r.name;
}

TEST(CaptureAutograd, KeptRecordsBackPropagate) {
  TappedModule t = TappedModule::load(fixture("nested_scripted.pt"));
  at::Tensor x = load_expected("nested").inputs[0].toTensor();
  CaptureOptions keep;
  keep.detach = false;
  Capture cap = t.run({x}, {"features.1"}, keep);
  ASSERT_EQ(cap.records.size(), 1u);
  ASSERT_TRUE(cap.records[0].value.requires_grad());
  cap.records[0].value.pow(2).sum().backward();
  // Independently: the same loss on features.1's output, computed with ATen from the parameters.
  const auto& m = t.module();
  at::Tensor w0 = param(m, "features.0.0", "weight").detach().clone().requires_grad_(true);
  at::Tensor h = at::tanh(at::linear(x, w0, param(m, "features.0.0", "bias").detach()));
  at::Tensor out = at::linear(h, param(m, "features.1", "weight").detach(),
                              param(m, "features.1", "bias").detach());
  out.pow(2).sum().backward();
  EXPECT_TRUE(AllClose(param(m, "features.0.0", "weight").grad(), w0.grad(), tol::kFloat32));
  EXPECT_FALSE(param(m, "head", "weight").grad().defined());  // head is after the capture
}

TEST(CaptureAutograd, TrainingStepsMatchForward) {
  // a: steps through forward_tapped without a recording (in-place ops in place); c: steps
  // through run() recording every layer, records kept in the graph (the in-place ops after taps
  // run out of place); b: plain forward.
  TappedModule a = TappedModule::load(fixture("resnet_scripted.pt"));
  TappedModule c = TappedModule::load(fixture("resnet_scripted.pt"));
  torch::jit::Module b = torch::jit::load(fixture("resnet_scripted.pt"));
  for (torch::jit::Module* m : {&a.module(), &b, &c.module()}) m->train();
  at::manual_seed(0);
  at::Tensor x = at::randn({4, 1, 5, 5});
  at::Tensor target = at::randn({4, 3});
  auto update = [](torch::jit::Module& m) {
    at::NoGradGuard g;
    for (const auto& p : m.parameters()) {
      p.sub_(0.1 * p.grad());
      p.mutable_grad().zero_();
    }
  };
  auto step = [&](torch::jit::Module& m, const std::string& method) {
    at::Tensor out = m.get_method(method)({x}).toTensor();
    (out - target).pow(2).mean().backward();
    update(m);
  };
  CaptureOptions keep;
  keep.detach = false;
  for (int i = 0; i < 3; ++i) {
    a.run({x});  // a capture in between must not disturb training
    b.forward({x});
    step(a.module(), "forward_tapped");
    step(b, "forward");
    Capture cap = c.run({x}, {}, keep);
    (cap.output.toTensor() - target).pow(2).mean().backward();
    update(c.module());
  }
  auto pb = b.named_parameters();
  for (TappedModule* t : {&a, &c}) {
    auto pa = t->module().named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (auto ia = pa.begin(), ib = pb.begin(); ia != pa.end(); ++ia, ++ib) {
      EXPECT_EQ((*ia).name, (*ib).name);
      EXPECT_TRUE(AllClose((*ia).value, (*ib).value, tol::kFloat32)) << (*ia).name;
    }
  }
  // The BatchNorm running statistics are updated the same way too.
  EXPECT_TRUE(AllClose(param(a.module(), "layer2.0.bn1", "running_var"),
                       param(b, "layer2.0.bn1", "running_var"), tol::kFloat32));
}

// ---- Selection ---------------------------------------------------------------------------------

TEST(CaptureSelect, ExactGlobRegex) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  EXPECT_EQ(r.select({"fc"}), std::vector<std::string>{"fc"});
  EXPECT_EQ(r.select({"layer2.?.conv1"}),
            (std::vector<std::string>{"layer2.0.conv1", "layer2.1.conv1"}));
  EXPECT_EQ(r.select({"layer1.*"}).size(), 12u);  // 2 blocks x (conv1 bn1 relu conv2 bn2) + 2
  EXPECT_EQ(r.select({"re:layer\\d\\.1\\.bn[12]", "fc", "layer1.1.bn1"}),
            (std::vector<std::string>{"layer1.1.bn1", "layer1.1.bn2", "layer2.1.bn1",
                                      "layer2.1.bn2", "fc"}));
  EXPECT_EQ(r.select({"layer2.0.downsample.[!1]"}),
            std::vector<std::string>{"layer2.0.downsample.0"});
  EXPECT_EQ(r.select({}), r.layer_names());
}

TEST(CaptureSelect, RunRecordsOnlySelectedLayers) {
  TappedModule t = TappedModule::load(fixture("tuple_scripted.pt"));
  Capture cap = t.run({load_expected("tuple").inputs[0]}, {"split"});
  std::vector<std::string> names;
  for (const auto& r : cap.records) names.push_back(r.name);
  EXPECT_EQ(names, (std::vector<std::string>{"split:0", "split:1:0", "split:1:1"}));
  EXPECT_EQ(t.layer_type("split:1:0"), "Split");
}

TEST(CaptureSelect, UnknownNamesAreErrors) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  EXPECT_THROWS_WITH_TYPE(r.select({"layer1.0.conv"}), c10::ValueError,
                          "closest existing names: 'layer1.0.conv1'");
  EXPECT_THROWS_WITH(r.select({"layer9.*"}), "pattern must match at least one layer");
  EXPECT_THROWS_WITH(r.select({"re:nothing"}), "but got 're:nothing'");
  EXPECT_THROWS_WITH(r.select({"re:("}), "valid regular expression");
  EXPECT_THROWS_WITH(r.run({at::randn({1, 1, 5, 5})}, {"conv"}), "closest existing names");
  EXPECT_THROWS_WITH(r.layer_type("nope"), "layer_type: name must be a layer");
}

// ---- Listing -----------------------------------------------------------------------------------

TEST(CaptureList, NamesTypesShapesCalls) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  r.module().train();
  at::Tensor mean = param(r.module(), "bn1", "running_mean").clone();
  Expected e = load_expected("resnet");
  std::vector<LayerInfo> infos = r.list_layers(e.inputs);
  EXPECT_EQ(infos.size(), r.layer_names().size());
  for (const auto& info : infos) {
    auto it = std::find(e.names.begin(), e.names.end(), info.name);
    ASSERT_NE(it, e.names.end()) << info.name;
    const size_t i = it - e.names.begin();
    EXPECT_EQ(info.type, e.types[i]);
    EXPECT_EQ(info.shape, e.values[i].sizes().vec()) << info.name;
    EXPECT_EQ(info.dtype, "float32");
    EXPECT_EQ(info.calls, std::count(e.names.begin(), e.names.end(), info.name)) << info.name;
  }
  // Listing ran in eval mode: no running-statistics update; the training flags are restored.
  EXPECT_TRUE(AllClose(param(r.module(), "bn1", "running_mean"), mean, tol::kClosedForm64));
  EXPECT_TRUE(r.module().is_training());
  EXPECT_TRUE(r.module().attr("layer1").toModule().is_training());
}

// ---- Save / load and threads -------------------------------------------------------------------

TEST(CaptureSave, SavedTappedModuleRunsAgain) {
  TappedModule t = TappedModule::load(fixture("twice_traced.pt"));
  const std::string path = temp_path("twice_tapped.pt");
  t.save(path);
  torch::jit::Module loaded = torch::jit::load(path);
  std::remove(path.c_str());
  // Without a recording the taps do nothing.
  at::Tensor x = load_expected("twice").inputs[0].toTensor();
  at::Tensor out = loaded.get_method("forward_tapped")({x}).toTensor();
  EXPECT_TRUE(AllClose(out, t.module().forward({x}).toTensor(), tol::kClosedForm64));
  TappedModule again(loaded);  // reuses the saved method
  EXPECT_EQ(again.layer_names(), t.layer_names());
  Capture a = again.run({x}), b = t.run({x});
  ASSERT_EQ(a.records.size(), b.records.size());
  for (size_t i = 0; i < a.records.size(); ++i) {
    EXPECT_EQ(a.records[i].name, b.records[i].name);
    EXPECT_TRUE(AllClose(a.records[i].value, b.records[i].value, tol::kClosedForm64));
  }
}

TEST(CaptureThreads, EachThreadHasItsOwnRecording) {
  TappedModule t = TappedModule::load(fixture("seq_scripted.pt"));
  at::Tensor x = load_expected("seq").inputs[0].toTensor();
  std::vector<Capture> caps(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] { caps[i] = t.run({x * (i + 1.0)}, {i == 0 ? "0" : "3"}); });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(caps[0].records.size(), 1u);
  ASSERT_EQ(caps[1].records.size(), 1u);
  EXPECT_EQ(caps[0].records[0].name, "0");
  EXPECT_EQ(caps[1].records[0].name, "3");
}

// TappedModule::save writes through a unique temporary (mkstemp): a user's "<path>.tmp" survives
// (before, it was overwritten and renamed away), concurrent saves to one path all succeed, and a
// failed save leaves no temporary.
TEST(CaptureSave, UniqueTemporariesKeepUserFilesAndAllowConcurrentSaves) {
  TappedModule t = TappedModule::load(fixture("seq_scripted.pt"));
  const std::string path = temp_path("unique_" + std::to_string(::getpid()) + ".pt");
  std::ofstream(path + ".tmp") << "mine";
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 3; ++k) {
        try {
          t.save(path);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_NO_THROW(torch::jit::load(path));
  std::ifstream mine(path + ".tmp");
  std::string content;
  mine >> content;
  EXPECT_EQ(content, "mine");
  std::remove((path + ".tmp").c_str());
  std::remove(path.c_str());
  // Onto a folder: a clear error, and the temporary is gone.
  const std::string dir = temp_path("folder_" + std::to_string(::getpid()));
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  EXPECT_THROWS_WITH(t.save(dir), "TappedModule::save: path must be writable");
  const std::string base = dir.substr(dir.rfind('/') + 1);
  DIR* d = ::opendir(::testing::TempDir().c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = ::readdir(d)) {
    EXPECT_EQ(std::string(e->d_name).find("." + base + ".tmp."), std::string::npos) << e->d_name;
  }
  ::closedir(d);
  ::rmdir(dir.c_str());
}

// ---- Modes and threads -------------------------------------------------------------------------

// EvalMode guards and list_layers from 8 threads on one module: each flag comes back as it was
// (before, a guard could save another's eval flags and leave the model in eval mode for good).
TEST(CaptureModes, ConcurrentEvalModeAndListLayersRestoreEveryFlag) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  r.module().train();
  r.module().attr("bn1").toModule().eval();  // a frozen batch-norm layer stays frozen
  const auto inputs = load_expected("resnet").inputs;
  std::atomic<int> in_train{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 10; ++k) {
        if (i % 2 == 0) {
          (void)r.list_layers(inputs);
        } else {
          EvalMode eval(r.module());
          if (r.module().is_training()) ++in_train;
          std::this_thread::yield();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(in_train.load(), 0);
  EXPECT_TRUE(r.module().is_training());
  EXPECT_FALSE(r.module().attr("bn1").toModule().is_training());
  EXPECT_TRUE(r.module().attr("layer1").toModule().is_training());
}

// While list_layers (an exclusive guard) holds the module in eval mode, a run on another thread
// waits, and then runs in the module's own (training) mode: never in a mode it did not ask for.
TEST(CaptureModes, RunOnAnotherThreadWaitsForListLayers) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  r.module().train();
  const auto inputs = load_expected("resnet").inputs;
  const at::Tensor train_out = r.run(inputs).output.toTensor();
  at::Tensor eval_out;
  {
    EvalMode eval(r.module());
    eval_out = r.run(inputs).output.toTensor();
  }
  EXPECT_FALSE(AllClose(eval_out, train_out, tol::kFloat32));  // the modes differ here
  at::Tensor other_out;
  std::atomic<bool> done{false};
  std::thread other;
  {
    EvalMode listing(r.module(), /*exclusive=*/true);
    other = std::thread([&] {
      other_out = r.run(inputs).output.toTensor();
      done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_FALSE(done.load());
  }
  other.join();
  EXPECT_TRUE(AllClose(other_out, train_out, tol::kFloat32));
  EXPECT_TRUE(r.module().is_training());
}

// Under an ordinary guard, worker threads capture in eval mode and can be joined inside the
// guard's scope (no wait on the guard); the guard restores the flags after they are done.
TEST(CaptureModes, WorkerThreadsCaptureInEvalModeUnderAGuard) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  r.module().train();
  const auto inputs = load_expected("resnet").inputs;
  at::Tensor eval_out;
  std::vector<at::Tensor> outs(4);
  {
    EvalMode eval(r.module());
    eval_out = r.run(inputs).output.toTensor();
    std::vector<std::thread> workers;
    for (size_t i = 0; i < outs.size(); ++i) {
      workers.emplace_back([&, i] { outs[i] = r.run(inputs).output.toTensor(); });
    }
    for (auto& w : workers) w.join();
  }
  for (const auto& o : outs) EXPECT_TRUE(AllClose(o, eval_out, tol::kClosedForm64));
  EXPECT_TRUE(r.module().is_training());
}

// ---- Record buffer pool ----------------------------------------------------------------------

CaptureOptions unpooled() {
  CaptureOptions o;
  o.reuse_buffers = false;
  return o;
}

const void* buffer_of(const at::Tensor& t) {
  return t.storage().data();
}

std::set<const void*> buffers_of(const Capture& cap) {
  std::set<const void*> out;
  for (const auto& r : cap.records) out.insert(buffer_of(r.value));
  return out;
}

TEST(CapturePool, PooledEqualsUnpooledBitwise) {
  for (const char* model :
       {"seq", "nested", "resnet", "twice", "tuple", "flow", "inplace", "loopwrite", "overload"}) {
    for (const char* kind : {"scripted", "traced"}) {
      const std::string file = std::string(model) + "_" + kind + ".pt";
      if (!std::ifstream(fixture(file)).good()) continue;
      TappedModule t = TappedModule::load(fixture(file));
      const std::vector<c10::IValue> inputs = load_expected(model).inputs;
      Capture want = t.run(inputs, {}, unpooled());
      EXPECT_EQ(t.pooled_bytes(), 0u) << file;
      // The first pooled run adopts and fills buffers, the second writes into the first's (which
      // were dropped), the third into the second's while the first is dropped.
      t.run(inputs);
      for (int pass = 0; pass < 2; ++pass) {
        Capture got = t.run(inputs);
        ASSERT_EQ(got.records.size(), want.records.size()) << file;
        for (size_t i = 0; i < want.records.size(); ++i) {
          EXPECT_EQ(got.records[i].name, want.records[i].name) << file;
          EXPECT_TRUE(at::equal(got.records[i].value, want.records[i].value))
              << file << " " << want.records[i].name << " pass " << pass;
        }
        EXPECT_TRUE(at::equal(got.output.toTensor(), want.output.toTensor())) << file;
      }
      EXPECT_GT(t.pooled_bytes(), 0u) << file;
    }
  }
}

TEST(CapturePool, DroppedRecordsAreReused) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  const std::vector<c10::IValue> inputs = load_expected("resnet").inputs;
  std::set<const void*> first = buffers_of(r.run(inputs));
  const size_t bytes = r.pooled_bytes();
  for (int pass = 0; pass < 2; ++pass) {
    Capture cap = r.run(inputs);
    // Copies go into the dropped capture's buffers: bn1 (rewritten by the in-place ReLU after
    // it) and fc (forward's output, which the caller may write to).
    for (const char* name : {"bn1", "layer1.0.bn1", "layer2.1.bn2", "fc"}) {
      EXPECT_TRUE(first.count(buffer_of(cap.values(name)[0]))) << name << " pass " << pass;
    }
    // Shared records are the forward's buffers, exchanged for free pooled ones: the pool holds
    // exactly this capture's buffers, each once, and does not grow.
    std::set<const c10::StorageImpl*> seen;
    size_t held = 0;
    for (const auto& rec : cap.records) {
      if (seen.insert(rec.value.storage().unsafeGetStorageImpl()).second) {
        held += rec.value.storage().nbytes();
      }
    }
    EXPECT_EQ(r.pooled_bytes(), held);
    EXPECT_EQ(r.pooled_bytes(), bytes);
    // A value recorded twice is stored once; a value rewritten in place between two taps is not.
    EXPECT_EQ(buffer_of(cap.values("layer1")[0]), buffer_of(cap.values("layer1.1")[0]));
    EXPECT_TRUE((cap.values("bn1")[0] < 0).any().item<bool>());
    EXPECT_FALSE((cap.values("relu")[0] < 0).any().item<bool>());
  }
}

TEST(CapturePool, HeldRecordsNeverChange) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  at::Tensor x = load_expected("resnet").inputs[0].toTensor();
  r.run({x});  // fills the pool; dropped
  Capture held = r.run({x});
  std::vector<at::Tensor> before;
  for (const auto& rec : held.records) before.push_back(rec.value.clone());
  Capture want = r.run({x * 2.0}, {}, unpooled());
  Capture other = r.run({x * 2.0});
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(at::equal(held.records[i].value, before[i])) << held.records[i].name;
    EXPECT_TRUE(at::equal(other.records[i].value, want.records[i].value)) << want.records[i].name;
  }
  for (const void* p : buffers_of(other)) EXPECT_FALSE(buffers_of(held).count(p));
}

TEST(CapturePool, ViewKeepsBufferFromReuse) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  at::Tensor x = load_expected("resnet").inputs[0].toTensor();
  std::vector<at::Tensor> views, before;
  {
    Capture cap = r.run({x});
    for (const auto& rec : cap.records) {
      views.push_back(rec.value[0]);
      before.push_back(views.back().clone());
    }
  }
  Capture other = r.run({-x});
  for (size_t i = 0; i < views.size(); ++i) {
    EXPECT_TRUE(at::equal(views[i], before[i])) << other.records[i].name;
  }
}

TEST(CapturePool, ReleaseBuffersLetsMemoryGo) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  const std::vector<c10::IValue> inputs = load_expected("resnet").inputs;
  at::Tensor kept;
  {
    Capture cap = r.run(inputs);
    kept = cap.values("fc")[0];
  }
  EXPECT_GT(r.pooled_bytes(), kept.storage().nbytes());  // kept after the caller dropped them
  r.release_buffers();
  EXPECT_EQ(r.pooled_bytes(), kept.storage().nbytes());  // a held record stays pooled
  kept.reset();
  r.release_buffers();
  EXPECT_EQ(r.pooled_bytes(), 0u);
}

TEST(CapturePool, GradientRecordsAreNotPooled) {
  TappedModule t = TappedModule::load(fixture("nested_scripted.pt"));
  CaptureOptions keep;
  keep.detach = false;
  Capture cap = t.run({load_expected("nested").inputs[0]}, {}, keep);
  EXPECT_EQ(t.pooled_bytes(), 0u);
  EXPECT_TRUE(cap.values("features.1")[0].requires_grad());
}

TEST(CapturePool, ConcurrentThreadsGetTheirOwnValues) {
  TappedModule r = TappedModule::load(fixture("resnet_scripted.pt"));
  at::Tensor x = load_expected("resnet").inputs[0].toTensor();
  std::vector<Capture> want;
  for (int i = 0; i < 2; ++i) want.push_back(r.run({x * (i + 1.0)}, {}, unpooled()));
  std::vector<int> bad(2, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      for (int pass = 0; pass < 20; ++pass) {
        Capture cap = r.run({x * (i + 1.0)});
        for (size_t k = 0; k < cap.records.size(); ++k) {
          if (!AllClose(cap.records[k].value, want[i].records[k].value, tol::kFloat32)) ++bad[i];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad[0], 0);
  EXPECT_EQ(bad[1], 0);
}

TEST(CapturePool, MethodTappedWithConstantCopyFlagsIsNotPooled) {
  // A method tapped before pooling existed passes copy=false to the taps of values that an
  // in-place op rewrites unless svcca::_tap_active: pooling must stay off for it.
  TappedModule fresh = TappedModule::load(fixture("resnet_scripted.pt"));
  auto graph =
      torch::jit::toGraphFunction(*fresh.module().type()->findMethod("forward_tapped")).graph();
  std::vector<torch::jit::Node*> taps;
  for (torch::jit::Node* n : graph->nodes()) {
    if (n->kind() == c10::Symbol::fromQualString("svcca::tap")) taps.push_back(n);
  }
  size_t rewritten = 0;
  for (torch::jit::Node* n : taps) {
    if (n->input(2)->node()->kind() == c10::prim::Constant) continue;
    torch::jit::WithInsertPoint guard(n);
    n->replaceInput(2, graph->insertConstant(false));
    ++rewritten;
  }
  ASSERT_GT(rewritten, 0u);
  TappedModule old(fresh.module());
  Expected e = load_expected("resnet");
  for (int pass = 0; pass < 2; ++pass) {
    Capture cap = old.run(e.inputs);
    EXPECT_TRUE((cap.values("bn1")[0] < 0).any().item<bool>());
    EXPECT_TRUE(AllClose(cap.values("bn1")[0], e.values[1], tol::kFloat32));
  }
  EXPECT_EQ(old.pooled_bytes(), 0u);
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(CaptureErrors, NotATorchScriptModel) {
  EXPECT_THROWS_WITH_TYPE(TappedModule::load(temp_path("missing.pt")), c10::ValueError,
                          "path must name a readable file");
  const std::string text = temp_path("text.pt");
  std::ofstream(text) << "not a model\n";
  EXPECT_THROWS_WITH_TYPE(TappedModule::load(text), c10::ValueError,
                          "path must be a TorchScript archive");
  std::remove(text.c_str());
}

TEST(CaptureErrors, FrozenModelIsReportedAsSuch) {
  EXPECT_THROWS_WITH_TYPE(TappedModule::load(fixture("frozen_scripted.pt")), c10::ValueError,
                          "module must not be frozen");
  EXPECT_THROWS_WITH_TYPE(TappedModule::load(fixture("frozen_scripted.pt")), c10::ValueError,
                          "module boundaries are gone");
}

TEST(CaptureErrors, RejectedInputShowsShapeAndModelError) {
  TappedModule seq = TappedModule::load(fixture("seq_scripted.pt"));
  EXPECT_THROWS_WITH(seq.run({at::randn({2, 1, 5, 5})}), "[2, 1, 5, 5]");
  EXPECT_THROWS_WITH(seq.run({at::randn({2, 1, 5, 5})}), "cannot be multiplied");
  // The recording ended: the next run works.
  EXPECT_EQ(seq.run({at::randn({2, 1, 6, 6})}).records.size(), 4u);
  EXPECT_THROWS_WITH(seq.list_layers({at::randn({2, 2, 6, 6})}), "list_layers: inputs must");
}

TEST(CaptureErrors, BadMethodNames) {
  torch::jit::Module m = torch::jit::load(fixture("seq_scripted.pt"));
  EXPECT_THROWS_WITH(TappedModule(m, "forward"), "must not name an existing method");
  EXPECT_THROWS_WITH(TappedModule(m, "not valid"), "method_name must be a Python identifier");
}

TEST(CaptureErrors, RecordingIsNotReentrant) {
  detail::begin_recording({}, true);
  EXPECT_THROWS_WITH(detail::begin_recording({}, true), "no recording must be active");
  detail::end_recording();
  EXPECT_THROWS_WITH(detail::end_recording(), "a recording must be active");
}

}  // namespace
}  // namespace svcca
