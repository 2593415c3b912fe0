// Activation capture from TorchScript modules: a tapped copy of `forward` that also records the
// output of every submodule call, named by module path. The only part of svcca that knows
// torch::jit (conventions, layering rule 6).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace svcca {

namespace detail {
class RecordPool;  // capture.cpp
}  // namespace detail

// One recorded value: the output of one submodule call. A module called twice gives two
// records with the same name, in call order. A tuple/list output is recorded element-wise,
// as "<name>:0", "<name>:1", ... (nested tuples: "<name>:0:1"); non-tensor elements are skipped.
struct CaptureRecord {
  std::string name;  // module path, e.g. "layer1.0.conv1"
  at::Tensor value;  // a copy (clone) of the output: later in-place ops do not change it
};

struct Capture {
  c10::IValue output;                  // what forward returned
  std::vector<CaptureRecord> records;  // every selected record, in call order

  // The records of one name, in call order (empty when there are none).
  std::vector<at::Tensor> values(const std::string& name) const;
  // The first record of every name, keyed by name, in first-call order.
  std::vector<std::pair<std::string, at::Tensor>> first_values() const;
  // Every record in call order, named by module path, and "<name>#<k>" (k = 1, 2, ...: the k-th
  // call) for a module called more than once in this forward.
  std::vector<std::pair<std::string, at::Tensor>> per_call_values() const;
};

// Puts every module of `module` in eval mode for the guard's lifetime and restores each one's own
// training flag afterwards (also when an exception unwinds). Thread-safe: guards on one module
// from several threads (or nested) are counted per submodule, so the first saves each flag and
// the last restores it, whatever the order of destruction. Modes never switch under a forward:
// the first guard waits for TappedModule::run calls in flight on other threads to end (they run
// in the module's own mode), and the last one for the runs that started under the guards (they
// run in eval mode). While an ordinary guard is held, runs of every thread run in eval mode (so a
// guard may be held while worker threads capture). `exclusive` (what list_layers uses): while
// the module is in eval mode only through exclusive guards, run() on other threads waits until
// they end instead of running in a mode it did not ask for. Keyed by the module object the guard
// was given (a guard on a submodule does not hold back runs of its parent); forward calls that do
// not go through TappedModule::run are not coordinated.
class EvalMode {
 public:
  explicit EvalMode(const torch::jit::Module& module, bool exclusive = false);
  ~EvalMode();
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  torch::jit::Module root_;
  std::thread::id owner_;
  bool exclusive_ = false;
  std::vector<torch::jit::Module> modes_;  // submodules with a training flag
};

struct CaptureOptions {
  // true: records are detached (measuring). false: records stay in the autograd graph, so a
  // loss built from them back-propagates into the model (similarity losses).
  bool detach = true;
  // true (and detach): records are written into buffers that the TappedModule keeps from one
  // run to the next (see "Memory" at TappedModule), so that a capture does not fault in fresh
  // memory for every record. false: every copy is a fresh clone, as a plain forward allocates.
  // Records hold the same values either way. Ignored when detach is false.
  bool reuse_buffers = true;
};

// What `list_layers` reports for one record name, for a given input.
struct LayerInfo {
  std::string name;            // module path (or "<path>:<i>" for tuple elements)
  std::string type;            // the module's class name, e.g. "Conv2d", "BasicBlock"
  std::vector<int64_t> shape;  // output shape of the first call
  std::string dtype;           // "float32", "float64", "int64", ... (torch's names)
  int64_t calls = 0;           // how many times the module ran in this forward
};

// A TorchScript module with a tapped method installed next to `forward` (which is left as is).
// The tap op is svcca::tap, registered by the op library svcca_ops: a program using this class
// links svcca::ops with LINKER:--no-as-needed (or loads the library); the constructor throws
// with that advice when the op is missing.
//
// What is tapped: the tapped method is forward's graph with every method call on self and its
// submodules inlined (recursively, inside If and Loop blocks too), and a tap after each call of
// a submodule's `forward` (and of the forward1, forward2, ... that torch.jit.trace makes for a
// module called more than once, and the forward__0, ... of an overloaded forward), named by
// module path: what a Python forward hook on that module
// sees, in the order hooks fire (inner modules before their containers). Calls of other methods
// (self.helper(x), self.block.extra(x)) are inlined without a record of their own, so the module
// calls inside them are recorded; a hook would not fire for them either. Calls through module
// interfaces cannot be inlined and are not tapped. Tracing limits what a traced model can give:
// a module that returns its input unchanged (nn.Identity, torchvision's StochasticDepth in eval
// mode) is traced to a method returning None (no record), and nested tuples returned by a
// submodule are flattened ("<path>:0", "<path>:1", "<path>:2" for (a, (b, c))).
//
// Copies: a record is a clone unless alias analysis proves that nothing after the tap writes to
// the value (no in-place op on it or a view of it) and that it aliases no input, output or
// module attribute; then the record shares the tensor, which costs nothing. Where an in-place op
// is what rewrites a tapped value (a BatchNorm output before ReLU(inplace=True), `out += x`) and
// nothing else aliases it, the tapped method runs that op out of place while that layer is
// being recorded without the buffer pool (same values, dtype kept; one fresh buffer, no copy)
// and in place otherwise (the tap then copies when it records).
// Taps inside loops and tuple elements always clone.
//
// Memory (CaptureOptions::reuse_buffers, the default when detaching): a TappedModule keeps a pool
// of record buffers, so that a capture does not fault in fresh memory for every record. A copy is
// written into a pooled buffer of its size that nothing references any more (the caller dropped
// every record and view of it). A shared record (see Copies) is the forward's buffer itself and
// joins the pool, in exchange for a free pooled buffer of its size, which goes back to the
// allocator for the forward's later allocations. A value recorded twice unchanged (a ReLU and the
// block that returns it) is stored once: both records share it. While pooling, an in-place op
// that rewrites a recorded value runs in place and the tap copies (into the pool) instead of
// running it out of place. A buffer the caller still references is never reused: held records
// and their views never change. The cost: after a capture the pool keeps its records' memory
// even when the caller drops them, until the next capture reuses or exchanges it (a capture ends
// by dropping the free buffers it did not use), release_buffers(), or the destruction of the last
// copy of this TappedModule (copies share the module and the pool).
//
//   auto tapped = svcca::TappedModule::load("net.pt");
//   auto cap = tapped.run({torch::randn({8, 1, 8, 8})}, {"features.*"});
//   for (auto& r : cap.records) std::cout << r.name << " " << r.value.sizes() << "\n";
class TappedModule {
 public:
  // Taps `module` (scripted or traced, loaded with torch::jit::load). The module is shared,
  // not copied: the tapped method is added to it, and forward is untouched. Throws when the
  // module is frozen (no submodule calls left in forward: "module boundaries are gone").
  explicit TappedModule(torch::jit::Module module, std::string method_name = "forward_tapped");

  // torch::jit::load with clear errors: a missing file, a file that is not a TorchScript
  // archive (a state_dict saved with torch.save, a text file, a truncated archive).
  // The module is tapped with `method_name` as in the constructor.
  static TappedModule load(const std::string& path, const c10::Device& device = c10::kCPU,
                           std::string method_name = "forward_tapped");

  // Every tappable module path that forward reaches, in tap order (static, no input needed).
  const std::vector<std::string>& layer_names() const { return names_; }
  // The class name of the module at `name` (throws on an unknown name).
  std::string layer_type(const std::string& name) const;

  // Resolves patterns to layer names, in layer_names() order, without duplicates. A pattern is
  // an exact name; a glob when it contains * ? or [ (fnmatch rules; * also crosses dots); or a
  // regular expression (ECMAScript, whole-name match) when written "re:<regex>". An exact name
  // that does not exist is an error listing the closest existing names; a glob or regex that
  // matches nothing is an error listing some names. Empty `patterns`: every layer.
  std::vector<std::string> select(const std::vector<std::string>& patterns) const;

  // Runs the tapped method on `inputs` and returns forward's output and the records of the
  // `layers` (names as returned by select; empty: all). Inputs the model rejects give an error
  // that quotes the model's message and the input shapes. Thread-safe across threads (each
  // thread has its own recording; the buffer pool is locked), not re-entrant within one thread.
  // Runs in the module's current mode; while another thread runs list_layers on this module
  // (an exclusive EvalMode), waits for it to end, and an EvalMode guard waits for runs in flight
  // before switching modes (see EvalMode).
  Capture run(const std::vector<c10::IValue>& inputs, const std::vector<std::string>& layers = {},
              const CaptureOptions& options = {}) const;

  // Names, module types and output shapes of every record for `inputs`, in call order. Runs the
  // tapped method once in eval mode (BatchNorm statistics do not move; every module's training
  // flag is restored afterwards) under an exclusive EvalMode guard, so concurrent list_layers and
  // run() calls on the module are safe (run() of other threads waits for it), without autograd,
  // recording meta tensors only: keeps no activations. Throws as run() does.
  std::vector<LayerInfo> list_layers(const std::vector<c10::IValue>& inputs) const;

  torch::jit::Module& module() { return module_; }
  const torch::jit::Module& module() const { return module_; }
  const std::string& method_name() const { return method_name_; }

  // Drops every pooled buffer that nothing else references (see "Memory" above); buffers of
  // records the caller still holds stay pooled. Thread-safe.
  void release_buffers() const;
  // Bytes of all pooled buffers, held by the caller or free (for tests and monitoring).
  size_t pooled_bytes() const;

  // Saves the module with its tapped method (torch::jit::Module::save), written to a temporary
  // name and renamed. Loading it needs the op library loaded first.
  void save(const std::string& path) const;

 private:
  torch::jit::Module module_;
  std::string method_name_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> types_;
  // Record buffers kept between runs (see "Memory"); shared by copies of this TappedModule.
  std::shared_ptr<detail::RecordPool> pool_;
  // False for a method tapped by an older svcca whose taps share values that an in-place op
  // rewrites unless svcca::_tap_active holds: pooling would make such an op run in place.
  bool poolable_ = true;
};

namespace detail {
// The body of the svcca::tap op: records `value` under `name` into the calling thread's active
// recording (a no-op when none is active, so a saved tapped model runs without a recording).
// `copy`: clone the tensor. The tapping pass passes false only where alias analysis proves that
// nothing writes to the value afterwards (and it aliases no input, output or module attribute);
// tuple and list elements are always cloned.
void record_tap(const c10::IValue& value, const std::string& name, bool copy = true);
// Whether the calling thread's recording records `name` and does not pool its buffers (the body
// of svcca::_tap_active, which guards the out-of-place twin of an in-place op that rewrites a
// tapped value; that tap's copy flag is its negation: a pooled recording copies into the pool
// and lets the op run in place).
bool tap_active(const std::string& name);
// Begin/end a recording on this thread: the bodies of the ops svcca::_capture_begin and
// svcca::_capture_end, through which TappedModule::run and Python record. `layers`: module paths
// to record (empty: all). `shapes_only`: records hold meta tensors (shape and dtype, no data).
// `pool`: None, or the capsule that TappedModule::run passes for its buffer pool (records are
// then written into pooled buffers; only with detach). Throws when a recording is already
// active (begin) or none is (end), and when `pool` is anything else.
void begin_recording(const std::vector<std::string>& layers, bool detach, bool shapes_only = false,
                     const c10::IValue& pool = c10::IValue());
std::vector<CaptureRecord> end_recording();
}  // namespace detail

}  // namespace svcca
