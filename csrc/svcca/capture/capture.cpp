// TappedModule: inlines forward, taps every submodule call with svcca::tap, and records taps.
#include "svcca/capture/capture.h"

#include "svcca/io/atomic_file.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/interned_strings.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/strides.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/operator.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace svcca {
namespace {

namespace jit = torch::jit;

const char* const kTapOp = "svcca::tap";
// Attributes stored on the tapped module, so that a saved tapped model knows its layers (the
// Python wrapper resolves globs against them).
const char* const kLayersAttr = "svcca_layers";
const char* const kTypesAttr = "svcca_layer_types";

c10::Symbol tap_symbol() {
  static const c10::Symbol s = c10::Symbol::fromQualString(kTapOp);
  return s;
}

c10::Symbol active_symbol() {
  static const c10::Symbol s = c10::Symbol::fromQualString("svcca::_tap_active");
  return s;
}

// svcca::tap and the guard the tapped graphs use (an older op library may lack the guard).
bool tap_op_registered() {
  return !jit::getAllOperatorsFor(tap_symbol()).empty() &&
         !jit::getAllOperatorsFor(active_symbol()).empty();
}

// "Conv2d" from "__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d".
std::string class_name(const c10::ClassTypePtr& type) {
  if (!type->name()) return "<unnamed>";
  return type->name()->name();
}

std::string join_path(const std::string& parent, const std::string& child) {
  return parent.empty() ? child : parent + "." + child;
}

// The message of an error raised while running a model: c10::Error without its C++ backtrace;
// the interpreter's own errors (JITException, std::runtime_error) as they are.
std::string error_text(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e))
    return c10_error->what_without_backtrace();
  return e.what();
}

std::string describe_inputs(const std::vector<c10::IValue>& inputs) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i) os << ", ";
    const auto& v = inputs[i];
    if (v.isTensor()) {
      const auto& t = v.toTensor();
      if (t.defined()) {
        os << "Tensor " << t.sizes() << " " << t.scalar_type();
      } else {
        os << "undefined Tensor";
      }
    } else {
      os << v.tagKind();
    }
  }
  os << ")";
  return os.str();
}

// ---- Graph rewriting -----------------------------------------------------------------------

// "forward"; the "forward1", "forward2", ... that torch.jit.trace creates when it traces a
// module called more than once (each call is traced into its own method); and the "forward__0",
// "forward__1", ... of an overloaded forward (torch.jit._overload_method, e.g. torchvision's
// DenseNet layers).
bool is_forward(const std::string& method) {
  if (method.rfind("forward", 0) != 0) return false;
  auto digits = [](auto begin, auto end) {
    return std::all_of(begin, end, [](char c) { return c >= '0' && c <= '9'; });
  };
  if (method.rfind("forward__", 0) == 0 && method.size() > 9) {
    return digits(method.begin() + 9, method.end());
  }
  return digits(method.begin() + 7, method.end());
}

// Inlines every method call on self and on its submodules, recursively (If/Loop blocks too), and
// after each call of a submodule's `forward` inserts svcca::tap(output, path, copy=True).
// Only `forward` calls (and traced modules' forward1, forward2, ...) are layer outputs (that is
// what a Python forward hook sees: hooks fire on module(x), which is forward); calls of other
// methods (self.helper(x), self.block.extra(x)) are inlined without a tap of their own, so the
// forward calls inside them are tapped. Calls through interface types (no static class) cannot be
// inlined and are left untapped.
class Tapper {
 public:
  Tapper(jit::Graph& graph, std::map<std::string, std::string>& types)
      : graph_(graph), types_(types) {
    paths_[graph.inputs().at(0)] = "";
  }

  void run() { process_range(graph_.block()->nodes().front(), graph_.block()->return_node()); }

 private:
  void process_range(jit::Node* first, jit::Node* end) {
    jit::Node* n = first;
    while (n != end) {
      jit::Node* next = n->next();
      if (n->kind() == c10::prim::GetAttr) {
        on_get_attr(n);
      } else if (n->kind() == c10::prim::CallMethod) {
        on_call_method(n, next);
      } else {
        for (jit::Block* b : n->blocks()) process_range(b->nodes().front(), b->return_node());
      }
      n = next;
    }
  }

  void on_get_attr(jit::Node* n) {
    auto it = paths_.find(n->input(0));
    if (it == paths_.end()) return;
    auto cls = n->output()->type()->cast<c10::ClassType>();
    if (!cls || !cls->is_module()) return;
    paths_[n->output()] = join_path(it->second, n->s(c10::attr::name));
  }

  void on_call_method(jit::Node* n, jit::Node* next) {
    auto it = paths_.find(n->input(0));
    if (it == paths_.end()) return;
    auto cls = n->input(0)->type()->cast<c10::ClassType>();
    if (!cls) return;
    const std::string path = it->second;
    const std::string method = n->s(c10::attr::name);
    jit::Function* fn = cls->findMethod(method);
    if (fn == nullptr || !fn->isGraphFunction()) return;
    auto& callee = jit::toGraphFunction(*fn);
    jit::Node* prev = n->prev();
    // The callee's own graph, not optimized_graph(): that one is already inlined (no taps).
    std::vector<jit::Value*> outputs = jit::inlineCallTo(n, &callee, callee.graph().get());
    jit::Node* region_end = next;
    if (is_forward(method) && !path.empty()) {
      TORCH_INTERNAL_ASSERT(outputs.size() == 1, "a method call has one output");
      // Insert the tap now: it holds a use of the output, so inlining the calls inside the
      // region (which replaces their outputs) keeps it pointing at the right value. Inner taps
      // are inserted before this one, which is the order Python's hooks fire in.
      jit::WithInsertPoint guard(next);
      jit::Value* name = graph_.insertConstant(path);
      jit::Value* copy = graph_.insertConstant(true);
      jit::Node* tap = graph_.create(tap_symbol(), {outputs[0], name, copy}, 0);
      graph_.insertNode(tap);
      region_end = name->node();
      types_.emplace(path, class_name(cls));
    }
    process_range(prev->next(), region_end);
  }

  jit::Graph& graph_;
  std::map<std::string, std::string>& types_;
  std::unordered_map<jit::Value*, std::string> paths_;
};

void collect_nodes(jit::Block* block, c10::Symbol kind, std::vector<jit::Node*>& out) {
  for (jit::Node* n : block->nodes()) {
    if (n->kind() == kind) out.push_back(n);
    for (jit::Block* b : n->blocks()) collect_nodes(b, kind, out);
  }
}

void collect_tensor_attrs(jit::Block* block, std::vector<jit::Value*>& out) {
  for (jit::Node* n : block->nodes()) {
    if (n->kind() == c10::prim::GetAttr && n->output()->type()->cast<c10::TensorType>()) {
      out.push_back(n->output());
    }
    for (jit::Block* b : n->blocks()) collect_tensor_attrs(b, out);
  }
}

void collect_all_nodes(jit::Block* block, std::vector<jit::Node*>& out) {
  for (jit::Node* n : block->nodes()) {
    out.push_back(n);
    for (jit::Block* b : n->blocks()) collect_all_nodes(b, out);
  }
}

std::unordered_set<const jit::Node*> enclosing_loops(const jit::Node* n) {
  std::unordered_set<const jit::Node*> loops;
  for (const jit::Node* p = n->owningBlock()->owningNode(); p; p = p->owningBlock()->owningNode()) {
    if (p->kind() == c10::prim::Loop) loops.insert(p);
  }
  return loops;
}

// A copy of the tapped graph in which each tap is replaced by an inert marker (a tap is
// CONSERVATIVE, so alias analysis would count it as a writer of its input), with its alias
// analysis and the map from its nodes to the tapped graph's (Graph::copy keeps node order).
struct TapAnalysis {
  std::shared_ptr<jit::Graph> plain;
  std::vector<jit::Node*> taps;                          // in the tapped graph
  std::vector<jit::Value*> values;                       // the tapped values, in plain
  std::vector<jit::Node*> markers;                       // where the taps were, in plain
  std::vector<jit::Node*> nodes;                         // every node of plain, program order
  std::unordered_map<jit::Node*, jit::Node*> to_tapped;  // plain node -> tapped graph node
  std::vector<jit::Value*> attrs;                        // tensors read from module attributes
  std::unique_ptr<jit::AliasDb> db;

  explicit TapAnalysis(jit::Graph& graph) : plain(graph.copy()) {
    std::vector<jit::Node*> tapped_nodes, plain_nodes, plain_taps;
    collect_all_nodes(graph.block(), tapped_nodes);
    collect_all_nodes(plain->block(), plain_nodes);
    TORCH_INTERNAL_ASSERT(tapped_nodes.size() == plain_nodes.size(), "Graph::copy keeps nodes");
    for (size_t i = 0; i < plain_nodes.size(); ++i) {
      to_tapped[plain_nodes[i]] = tapped_nodes[i];
      if (plain_nodes[i]->kind() == tap_symbol()) {
        taps.push_back(tapped_nodes[i]);
        plain_taps.push_back(plain_nodes[i]);
      }
    }
    for (jit::Node* t : plain_taps) {
      values.push_back(t->input(0));
      jit::WithInsertPoint guard(t);
      markers.push_back(plain->insertConstant(int64_t{0})->node());
      t->destroy();
    }
    collect_all_nodes(plain->block(), nodes);
    collect_tensor_attrs(plain->block(), attrs);
    db = std::make_unique<jit::AliasDb>(plain);
  }

  // Whether tap i could share its tensor, as far as everything but later writes goes: a tensor
  // that aliases no input, output (the caller may write to those) or module attribute (the
  // optimizer and BatchNorm write to those), outside loops. AliasDb does not relate a loop body's
  // outputs to its inputs in the next iteration, so it would miss a write early in the body to
  // what the previous iteration tapped: taps inside a loop always copy.
  bool shareable(size_t i) const {
    jit::Value* v = values[i];
    if (!v->type()->cast<c10::TensorType>()) return false;
    if (db->mayContainAlias(v, plain->inputs()) || db->mayContainAlias(v, plain->outputs())) {
      return false;
    }
    if (!attrs.empty() && db->mayContainAlias(v, attrs)) return false;
    return enclosing_loops(markers[i]).empty();
  }

  // The first node after tap i that writes to its tensor or an alias of it (nullptr: none).
  jit::Node* first_writer(size_t i) const {
    const jit::ValueSet vs{values[i]};
    for (jit::Node* n : nodes) {
      if (!n->blocks().empty()) continue;  // their inner nodes are visited themselves
      if (n->isAfter(markers[i]) && db->writesToAlias(n, vs)) return n;
    }
    return nullptr;
  }
};

// The out-of-place twin of an in-place ATen op `w` = op_(v, ...) whose mutation nothing but v's
// later uses can observe: no value defined before w other than v may alias v (a view of v, or
// v a view of something, would see the write). Binary ops may take a tensor `other`.
bool can_functionalize(const TapAnalysis& a, jit::Node* w, jit::Value* v) {
  const std::string qual = w->kind().toQualString();
  if (!w->kind().is_aten() || qual.size() < 2 || qual.back() != '_' ||
      qual[qual.size() - 2] == '_') {
    return false;
  }
  if (w->outputs().size() != 1 || w->inputs().empty() || w->input(0) != v) return false;
  static const std::unordered_set<std::string> binary{"aten::add_", "aten::sub_", "aten::mul_",
                                                      "aten::div_"};
  for (size_t j = 1; j < w->inputs().size(); ++j) {
    if (w->input(j)->type()->cast<c10::TensorType>() && !binary.count(qual)) return false;
  }
  for (jit::Node* n : a.nodes) {
    if (!n->isBefore(w)) continue;
    for (jit::Value* u : n->outputs()) {
      if (u != v && a.db->mayContainAlias(u, v)) return false;
    }
  }
  return true;
}

// Makes w = op_(v, ...), which rewrites what `tap` records, conditional on the tap recording:
//   if svcca::_tap_active(name): r = op(v, ...) cast to v's dtype (in-place ops do not promote)
//   else:                        r = op_(v, ...)
// and every later use of v and of w's output uses r. The tap's copy flag becomes
// `not svcca::_tap_active(name)`: an unpooled recording of the layer records v without a copy
// (nothing writes to v any more), costing one fresh buffer instead of a copy, and an unrecorded
// one costs nothing; a pooled recording (for which _tap_active is false) copies v into a pooled
// buffer and runs the op in place, which reuses memory where a fresh buffer would not.
bool functionalize(jit::Graph& graph, jit::Node* w, jit::Node* tap) {
  jit::Value* v = tap->input(0);
  const std::string qual = w->kind().toQualString();
  const c10::Symbol functional = c10::Symbol::fromQualString(qual.substr(0, qual.size() - 1));
  jit::WithInsertPoint guard(w);
  jit::Node* active = graph.insertNode(graph.create(active_symbol(), {tap->input(1)}, 1));
  active->output()->setType(c10::BoolType::get());
  jit::Node* branch = graph.insertNode(graph.create(c10::prim::If, {active->output()}, 1));
  jit::Block* recording = branch->addBlock();
  jit::Block* otherwise = branch->addBlock();
  {
    jit::WithInsertPoint in_block(recording);
    jit::Node* f = graph.insertNode(graph.create(functional, w->inputs(), 1));
    if (f->maybeSchema() == nullptr) {
      branch->destroy();
      active->destroy();
      return false;
    }
    f->output()->setType(w->output()->type());
    jit::Value* dtype = graph.insert(c10::prim::dtype, {v});
    recording->registerOutput(graph.insert(c10::aten::to, {f->output(), dtype}));
  }
  jit::Value* r = branch->output()->setType(w->output()->type());
  w->output()->replaceAllUsesWith(r);
  w->moveBefore(otherwise->return_node());
  otherwise->registerOutput(w->output());
  // Uses inside the branch are not dominated by it: only the later ones change.
  v->replaceAllUsesDominatedByNodeWith(branch, r);
  jit::WithInsertPoint at_tap(tap);
  jit::Node* unpooled = graph.insertNode(graph.create(active_symbol(), {tap->input(1)}, 1));
  unpooled->output()->setType(c10::BoolType::get());
  tap->replaceInput(2, graph.insert(c10::aten::__not__, {unpooled->output()}));
  return true;
}

// A tapped value that an in-place op rewrites right after the tap (resnet's BatchNorm output
// before ReLU(inplace=True) or `out += identity`) would need a copy: makes one such op
// conditional (see functionalize). False when none is left.
bool functionalize_one_write(jit::Graph& graph) {
  TapAnalysis a(graph);
  for (size_t i = 0; i < a.taps.size(); ++i) {
    if (!a.shareable(i)) continue;
    jit::Node* w = a.first_writer(i);
    if (w == nullptr || w->owningBlock() != a.markers[i]->owningBlock()) continue;
    if (!can_functionalize(a, w, a.values[i])) continue;
    if (functionalize(graph, a.to_tapped.at(w), a.taps[i])) return true;
  }
  return false;
}

// Clears the copy flag of taps whose value provably never changes after the tap: shareable (see
// TapAnalysis) and written by no node after the tap (in place or through a view). Everything else
// keeps copy=True. In resnet18, after functionalize_one_write, only the output (fc) is copied.
void elide_safe_copies(jit::Graph& graph) {
  TapAnalysis a(graph);
  for (size_t i = 0; i < a.taps.size(); ++i) {
    if (!a.shareable(i) || a.first_writer(i) != nullptr) continue;
    jit::WithInsertPoint guard(a.taps[i]);
    a.taps[i]->replaceInput(2, graph.insertConstant(false));
  }
}

// The tap names of a graph in graph order, which is the order the taps run in (inner modules
// before the containers that call them, as Python's hooks fire); each name once.
std::vector<std::string> tap_names(jit::Graph& graph) {
  std::vector<jit::Node*> taps;
  collect_nodes(graph.block(), tap_symbol(), taps);
  std::vector<std::string> names;
  std::unordered_set<std::string> seen;
  for (jit::Node* t : taps) {
    c10::optional<c10::IValue> name = jit::toIValue(t->input(1));
    if (name && name->isString() && seen.insert(name->toStringRef()).second) {
      names.push_back(name->toStringRef());
    }
  }
  return names;
}

// Whether a tapped graph stays correct when pooling (svcca::_tap_active false while recording):
// every layer whose in-place rewrite is guarded by _tap_active must have a tap whose copy flag is
// computed at run time (see functionalize). Methods tapped by an older svcca pass a constant
// false there: pooling would let the op rewrite a shared record.
bool pool_safe(jit::Graph& graph) {
  std::vector<jit::Node*> guards, taps;
  collect_nodes(graph.block(), active_symbol(), guards);
  collect_nodes(graph.block(), tap_symbol(), taps);
  std::unordered_set<std::string> runtime_copy;
  for (jit::Node* t : taps) {
    c10::optional<c10::IValue> name = jit::toIValue(t->input(1));
    if (name && name->isString() && t->inputs().size() > 2 &&
        t->input(2)->node()->kind() != c10::prim::Constant) {
      runtime_copy.insert(name->toStringRef());
    }
  }
  for (jit::Node* g : guards) {
    const bool guards_op =
        std::any_of(g->output()->uses().begin(), g->output()->uses().end(),
                    [](const jit::Use& u) { return u.user->kind() == c10::prim::If; });
    c10::optional<c10::IValue> name = jit::toIValue(g->input(0));
    if (guards_op && (!name || !name->isString() || !runtime_copy.count(name->toStringRef()))) {
      return false;
    }
  }
  return true;
}

bool has_taps(const jit::Function& fn) {
  if (!fn.isGraphFunction()) return false;
  std::vector<jit::Node*> taps;
  collect_nodes(jit::toGraphFunction(fn).graph()->block(), tap_symbol(), taps);
  return !taps.empty();
}

bool is_identifier(const std::string& s) {
  static const std::regex re("[A-Za-z_][A-Za-z0-9_]*");
  return std::regex_match(s, re);
}

// ---- Selection -------------------------------------------------------------------------------

// fnmatch: * any run (dots included), ? one character, [abc] / [a-z] / [!abc] one of a set.
bool glob_match(const char* p, const char* s) {
  while (*p) {
    if (*p == '*') {
      while (*p == '*') ++p;
      if (!*p) return true;
      for (const char* t = s; *t; ++t) {
        if (glob_match(p, t)) return true;
      }
      return false;
    }
    if (!*s) return false;
    if (*p == '?') {
      ++p;
      ++s;
      continue;
    }
    if (*p == '[') {
      const char* q = p + 1;
      bool negate = *q == '!' || *q == '^';
      if (negate) ++q;
      bool matched = false;
      const char* start = q;
      while (*q && (*q != ']' || q == start)) {
        if (q[1] == '-' && q[2] && q[2] != ']') {
          if (*s >= q[0] && *s <= q[2]) matched = true;
          q += 3;
        } else {
          if (*s == *q) matched = true;
          ++q;
        }
      }
      if (*q != ']') {  // no closing bracket: a literal '['
        if (*s != '[') return false;
        ++p;
        ++s;
        continue;
      }
      if (matched == negate) return false;
      p = q + 1;
      ++s;
      continue;
    }
    if (*p != *s) return false;
    ++p;
    ++s;
  }
  return !*s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string quoted_list(const std::vector<std::string>& names, size_t limit) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size() && i < limit; ++i)
    os << (i ? ", " : "") << "'" << names[i] << "'";
  if (names.size() > limit) os << ", ... (" << names.size() << " in all)";
  return os.str();
}

std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& names,
                                 size_t count) {
  std::vector<std::pair<size_t, size_t>> scored;  // (distance, index)
  for (size_t i = 0; i < names.size(); ++i) scored.emplace_back(edit_distance(name, names[i]), i);
  std::stable_sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && i < count; ++i) out.push_back(names[scored[i].second]);
  return out;
}

}  // namespace

// ---- Record buffer pool ----------------------------------------------------------------------

namespace detail {

// Record buffers kept between captures (see "Memory" in capture.h), by device and byte size. A
// buffer is free when the pool holds the only reference to its storage: the caller dropped every
// record and view of it. Then nothing but the pool can take a new reference to it, and the pool
// does so under its lock, so two threads never take the same buffer.
class RecordPool {
 public:
  // A free buffer of exactly `nbytes` on `device`, now also referenced by the returned storage;
  // an undefined storage when there is none.
  c10::Storage take(const c10::Device& device, size_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = buffers_.find(key(device, nbytes));
    if (it == buffers_.end()) return {};
    for (const c10::Storage& s : it->second) {
      if (s.use_count() == 1) return s;
    }
    return {};
  }

  // Keeps `storage` (a record's whole buffer) for later captures in place of a free buffer of
  // its size, if there is one, which is released to the allocator (after the lock: freeing may
  // take a while); no-op when `storage` is already kept.
  void adopt(const c10::Storage& storage) {
    c10::Storage released;
    std::lock_guard<std::mutex> lock(mutex_);
    auto& list = buffers_[key(storage.device(), storage.nbytes())];
    for (const c10::Storage& s : list) {
      if (s.is_alias_of(storage)) return;
    }
    for (c10::Storage& s : list) {
      if (s.use_count() == 1) {
        released = std::move(s);
        s = storage;
        return;
      }
    }
    list.push_back(storage);
    bytes_ += storage.nbytes();
  }

  // Drops every free buffer.
  void drop_free() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = buffers_.begin(); it != buffers_.end();) {
      auto& list = it->second;
      for (size_t i = list.size(); i-- > 0;) {
        if (list[i].use_count() == 1) {
          bytes_ -= list[i].nbytes();
          list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      it = list.empty() ? buffers_.erase(it) : std::next(it);
    }
  }

  size_t bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return bytes_;
  }

 private:
  using Key = std::tuple<int, int, size_t>;  // device type, device index, bytes
  static Key key(const c10::Device& device, size_t nbytes) {
    return {static_cast<int>(device.type()), static_cast<int>(device.index()), nbytes};
  }

  mutable std::mutex mutex_;
  std::map<Key, std::vector<c10::Storage>> buffers_;
  size_t bytes_ = 0;
};

// How TappedModule::run hands its pool to svcca::_capture_begin: an IValue capsule (Python
// cannot make one, so an op argument from Python is never taken for a pool).
struct PoolCapsule : torch::CustomClassHolder {
  explicit PoolCapsule(std::shared_ptr<RecordPool> pool) : pool(std::move(pool)) {}
  std::shared_ptr<RecordPool> pool;
};

}  // namespace detail

namespace {

// ---- Recording -------------------------------------------------------------------------------

struct Recording {
  bool all = true;
  std::unordered_set<std::string> layers;
  bool detach = true;
  bool shapes_only = false;  // records hold meta tensors: shape and dtype, no memory
  std::vector<CaptureRecord> records;
  // Null: every copy is a fresh clone. Else records are written into pooled buffers, and
  // `pooled` lists what this capture recorded, so that a value recorded twice (unchanged) is
  // copied once.
  std::shared_ptr<detail::RecordPool> pool;
  struct Pooled {
    // Weak: keeps the address from being reused by another storage while this capture runs,
    // without keeping the forward's buffer alive.
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t offset;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype;
    int64_t version;  // in-place writes (through any view) bump it
    at::Tensor record;
  };
  std::vector<Pooled> pooled;
};

thread_local std::unique_ptr<Recording> active_recording;

bool same_value(const Recording::Pooled& p, const at::Tensor& t) {
  return p.storage._unsafe_get_target() == t.storage().unsafeGetStorageImpl() &&
         p.offset == t.storage_offset() && p.dtype == t.scalar_type() &&
         p.version == t._version() && t.sizes().equals(p.sizes) && t.strides().equals(p.strides);
}

// Whether t is all of its storage: then nothing but views of t can see the buffer.
bool covers_storage(const at::Tensor& t) {
  return t.storage_offset() == 0 && t.is_non_overlapping_and_dense() &&
         t.storage().nbytes() == static_cast<size_t>(t.numel()) * t.itemsize();
}

// The record of the detached `t` with the pool (see "Memory" in capture.h). `copy`: the value
// changes after the tap, so the record must not share t's buffer.
at::Tensor pooled_record(Recording& r, const at::Tensor& t, bool copy) {
  // Inference tensors keep no version counter: a rewrite between two taps would go unseen.
  const bool dedupe = !t.is_inference();
  if (dedupe) {
    for (const auto& p : r.pooled) {
      if (same_value(p, t)) return p.record;
    }
  }
  at::Tensor out;
  if (!copy) {
    // Shared: the record is the forward's buffer itself, so no copy is made; a free pooled
    // buffer of its size goes back to the allocator in exchange, for the forward's next
    // allocations, as the forward's own buffer would in a plain forward. (Copying into the free
    // buffer instead, a memcpy of 1.9 GB per resnet18 batch-64 capture, measured 1.08x forward
    // against 1.03-1.07x: the large activations are mapped fresh by the allocator in a plain
    // forward too.) A view of a larger buffer is recorded as it is, as without the pool.
    out = t;
    if (covers_storage(t)) r.pool->adopt(t.storage());
  } else if (c10::Storage buffer =
                 r.pool->take(t.device(), static_cast<size_t>(t.numel()) * t.itemsize())) {
    // A copy into memory an earlier capture mapped, where a clone would map fresh memory.
    const bool dense = t.is_non_overlapping_and_dense();
    out = at::empty({0}, t.options());
    out.set_(std::move(buffer), 0, t.sizes(),
             dense ? t.strides() : c10::contiguous_strides(t.sizes()));
    out.copy_(t);
  } else {
    out = t.clone();
    if (covers_storage(out)) r.pool->adopt(out.storage());
  }
  if (dedupe) {
    r.pooled.push_back({t.storage().getWeakStorageImpl(), t.storage_offset(), t.sizes().vec(),
                        t.strides().vec(), t.scalar_type(), t._version(), out});
  }
  return out;
}

// Tensors whose bytes a plain copy reproduces: strided, with a storage, not quantized, no lazy
// conjugate or negative bit.
bool poolable(const at::Tensor& t) {
  return t.layout() == at::kStrided && t.has_storage() && !t.is_quantized() && !t.is_conj() &&
         !t.is_neg() && t.numel() > 0;
}

void store(Recording& r, const at::Tensor& t, const std::string& name, bool copy) {
  if (!t.defined()) return;
  if (r.shapes_only) {
    r.records.push_back({name, at::empty(t.sizes(), t.options().device(at::kMeta))});
    return;
  }
  at::Tensor v = r.detach ? t.detach() : t;
  if (r.pool && poolable(v)) {
    r.records.push_back({name, pooled_record(r, v, copy)});
    return;
  }
  // clone() is differentiable: with detach=false the copy stays in the autograd graph.
  if (copy) v = v.clone();
  r.records.push_back({name, std::move(v)});
}

void record_value(Recording& r, const c10::IValue& value, const std::string& name, bool copy) {
  if (value.isTensor()) {
    store(r, value.toTensor(), name, copy);
  } else if (value.isTuple()) {
    const auto& elems = value.toTupleRef().elements();
    for (size_t i = 0; i < elems.size(); ++i) {
      record_value(r, elems[i], name + ":" + std::to_string(i), true);
    }
  } else if (value.isList()) {
    auto list = value.toList();
    for (size_t i = 0; i < list.size(); ++i) {
      record_value(r, list.get(i), name + ":" + std::to_string(i), true);
    }
  }
  // Other values (None, numbers, strings, dicts) are not activations: skipped.
}

// TappedModule begins and ends its recordings through the ops svcca::_capture_begin/_end, not
// by calling detail:: directly: the recording must be the one that the svcca::tap kernel writes
// to, and that kernel lives in libsvcca_ops, which holds its own copy of svcca_core when a
// program links svcca_core statically and loads the op library with dlopen.
c10::OperatorHandle capture_op(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  TORCH_CHECK(op.has_value(), "TappedModule: the op ", name,
              " must be registered, but got no such op: link svcca::ops with "
              "LINKER:--no-as-needed (or load libsvcca_ops.so) in this program");
  return *op;
}

void begin_through_ops(const std::vector<std::string>& layers, bool detach, bool shapes_only,
                       c10::IValue pool = c10::IValue()) {
  torch::jit::Stack stack{c10::IValue(c10::List<std::string>(layers)), c10::IValue(detach),
                          c10::IValue(shapes_only), std::move(pool)};
  capture_op("svcca::_capture_begin").callBoxed(&stack);
}

std::vector<CaptureRecord> end_through_ops() {
  torch::jit::Stack stack;
  capture_op("svcca::_capture_end").callBoxed(&stack);
  TORCH_INTERNAL_ASSERT(stack.size() == 2, "_capture_end returns (names, values)");
  const auto names = stack[0].toListRef();
  const auto values = stack[1].toTensorList();
  std::vector<CaptureRecord> out;
  out.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i].toStringRef(), values[i]});
  return out;
}

// Ends the recording when run() or list_layers() leaves by an exception.
struct RecordingGuard {
  ~RecordingGuard() {
    if (!active) return;
    try {
      end_through_ops();
    } catch (...) {  // destructors must not throw; the original error propagates
    }
  }
  bool active = true;
};

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    case at::kComplexFloat:
      return "complex64";
    case at::kComplexDouble:
      return "complex128";
    default:
      return c10::toString(t);
  }
}

}  // namespace

// ---- Capture -------------------------------------------------------------------------------

std::vector<at::Tensor> Capture::values(const std::string& name) const {
  std::vector<at::Tensor> out;
  for (const auto& r : records) {
    if (r.name == name) out.push_back(r.value);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> Capture::first_values() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::unordered_set<std::string> seen;
  for (const auto& r : records) {
    if (seen.insert(r.name).second) out.emplace_back(r.name, r.value);
  }
  return out;
}

// ---- TappedModule ----------------------------------------------------------------------------

TappedModule::TappedModule(torch::jit::Module module, std::string method_name)
    : module_(std::move(module)),
      method_name_(std::move(method_name)),
      pool_(std::make_shared<detail::RecordPool>()) {
  TORCH_CHECK(tap_op_registered(),
              "TappedModule: the op svcca::tap must be registered, but got no such op: link "
              "svcca::ops with LINKER:--no-as-needed (or load libsvcca_ops.so) in this program");
  TORCH_CHECK_VALUE(is_identifier(method_name_),
                    "TappedModule: method_name must be a Python identifier, but got '",
                    method_name_, "'");
  const c10::ClassTypePtr type = module_.type();
  jit::Function* forward = type->findMethod("forward");
  TORCH_CHECK_VALUE(forward != nullptr && forward->isGraphFunction(),
                    "TappedModule: module must have a TorchScript forward method, but got a "
                    "module of type ",
                    class_name(type), " without one");

  std::shared_ptr<jit::Graph> graph = jit::toGraphFunction(*forward).graph()->copy();
  Tapper tapper(*graph, types_);
  tapper.run();
  names_ = tap_names(*graph);
  if (names_.empty()) {
    const size_t children = module_.children().size();
    // torch.jit.freeze inlines every submodule and drops the attributes, `training` included.
    const bool frozen = children == 0 && !type->hasAttribute("training");
    TORCH_CHECK_VALUE(!frozen, "TappedModule: module must not be frozen, but got a frozen module (",
                      class_name(type),
                      "): torch.jit.freeze inlined its submodules, so its module boundaries are "
                      "gone; tap the model before freezing it");
    TORCH_CHECK_VALUE(children != 0,
                      "TappedModule: module must call submodules in forward, but got "
                      "a module (",
                      class_name(type), ") without submodules: nothing to tap");
    TORCH_CHECK_VALUE(false,
                      "TappedModule: module's forward must call its submodules, but got "
                      "none of its ",
                      children,
                      " submodules called from forward (they may be "
                      "called through module interfaces, which cannot be inlined)");
  }
  // Function calls are inlined too, so the alias analysis sees what they do to the tapped
  // values; tap nodes hold uses of those values and follow the replacement.
  jit::Inline(*graph);
  // Folds `if self.inplace:` and the like (constant module attributes), so that in-place ops
  // sit in the block of the tap they follow.
  jit::ConstantPropagation(graph);
  for (size_t i = 0; i <= names_.size() * 4 && functionalize_one_write(*graph); ++i) {
  }
  elide_safe_copies(*graph);

  if (jit::Function* existing = type->findMethod(method_name_)) {
    // A module tapped before (e.g. loaded from a saved tapped model): use its method, and the
    // names its taps carry.
    TORCH_CHECK_VALUE(has_taps(*existing), "TappedModule: method_name must not name an existing ",
                      "method of the module, but got '", method_name_, "'");
    names_ = tap_names(*jit::toGraphFunction(*existing).graph());
    poolable_ = pool_safe(*jit::toGraphFunction(*existing).graph());
    for (const auto& n : names_) types_.emplace(n, "<unknown>");
  } else {
    auto cu = module_._ivalue()->compilation_unit();
    c10::QualifiedName qualname(*type->name(), method_name_);
    jit::Function* fn = cu->create_function(qualname, graph);
    type->addMethod(fn);
  }
  std::vector<std::string> type_list;
  for (const auto& n : names_) type_list.push_back(types_.at(n));
  module_.register_attribute(kLayersAttr, c10::ListType::ofStrings(),
                             c10::List<std::string>(names_));
  module_.register_attribute(kTypesAttr, c10::ListType::ofStrings(),
                             c10::List<std::string>(type_list));
}

TappedModule TappedModule::load(const std::string& path, const c10::Device& device,
                                std::string method_name) {
  {
    std::ifstream f(path, std::ios::binary);
    TORCH_CHECK_VALUE(f.good(), "TappedModule::load: path must name a readable file, but got '",
                      path, "' (no such file, or not readable)");
  }
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    std::string reason = e.what_without_backtrace();
    if (reason.size() > 300) reason = reason.substr(0, 300) + "...";
    TORCH_CHECK_VALUE(false,
                      "TappedModule::load: path must be a TorchScript archive "
                      "(torch.jit.save of a scripted or traced module), but got '",
                      path,
                      "', which torch::jit::load rejects (a state_dict or model saved with "
                      "torch.save is not TorchScript): ",
                      reason);
  }
  return TappedModule(std::move(module), std::move(method_name));
}

std::string TappedModule::layer_type(const std::string& name) const {
  auto it = types_.find(name);
  if (it == types_.end()) {
    // "<path>:<i>" names a tuple element of the module at <path>.
    auto colon = name.find(':');
    if (colon != std::string::npos) it = types_.find(name.substr(0, colon));
  }
  TORCH_CHECK_VALUE(it != types_.end(), "layer_type: name must be a layer of the module, but got '",
                    name, "'; closest: ", quoted_list(closest(name, names_, 3), 3));
  return it->second;
}

std::vector<std::string> TappedModule::select(const std::vector<std::string>& patterns) const {
  if (patterns.empty()) return names_;
  std::vector<bool> chosen(names_.size(), false);
  for (const auto& pattern : patterns) {
    bool any = false;
    if (pattern.rfind("re:", 0) == 0) {
      std::regex re;
      try {
        re = std::regex(pattern.substr(3), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        TORCH_CHECK_VALUE(false, "select: pattern must be a valid regular expression after 're:', ",
                          "but got '", pattern, "' (", e.what(), ")");
      }
      for (size_t i = 0; i < names_.size(); ++i) {
        if (std::regex_match(names_[i], re)) chosen[i] = any = true;
      }
      TORCH_CHECK_VALUE(any, "select: pattern must match at least one layer, but got '", pattern,
                        "', which matches none of ", quoted_list(names_, 8));
    } else if (pattern.find_first_of("*?[") != std::string::npos) {
      for (size_t i = 0; i < names_.size(); ++i) {
        if (glob_match(pattern.c_str(), names_[i].c_str())) chosen[i] = any = true;
      }
      TORCH_CHECK_VALUE(any, "select: pattern must match at least one layer, but got '", pattern,
                        "', which matches none of ", quoted_list(names_, 8));
    } else {
      auto it = std::find(names_.begin(), names_.end(), pattern);
      TORCH_CHECK_VALUE(it != names_.end(),
                        "select: layer name must exist in the module, but got '", pattern,
                        "'; closest existing names: ", quoted_list(closest(pattern, names_, 3), 3));
      chosen[it - names_.begin()] = true;
    }
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (chosen[i]) out.push_back(names_[i]);
  }
  return out;
}

namespace {

// Process-wide bookkeeping of modes (see EvalMode in capture.h): per module object, its guards
// (ordinary ones, and exclusive ones by thread), runs in flight and guards waiting to switch
// modes; per submodule object, how many guards hold it in eval mode and its flag before the
// first.
struct ModeGate {
  struct Entry {
    int guards = 0;                                      // ordinary EvalMode guards
    std::unordered_map<std::thread::id, int> exclusive;  // exclusive guards (list_layers)
    int exclusive_count = 0;
    int runs = 0;     // TappedModule::run calls in flight
    int pending = 0;  // guards waiting for runs to end before switching modes
    bool idle() const { return guards == 0 && exclusive_count == 0 && runs == 0 && pending == 0; }
  };
  struct Flag {
    int count = 0;
    bool saved = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<const c10::ivalue::Object*, Entry> entries;
  std::unordered_map<const c10::ivalue::Object*, Flag> flags;

  void drop_if_idle(const c10::ivalue::Object* key) {
    auto it = entries.find(key);
    if (it != entries.end() && it->second.idle()) entries.erase(it);
  }
};

ModeGate& mode_gate() {
  static ModeGate* gate = new ModeGate();  // never destroyed: guards may outlive static teardown
  return *gate;
}

// Held by TappedModule::run for its forward. Waits while a guard is about to switch the module's
// mode, and while the module is in eval mode only through another thread's exclusive guard (a
// list_layers: the run asked for the module's own mode); counts as in flight meanwhile, so that
// no guard switches modes under it.
class RunModeGuard {
 public:
  explicit RunModeGuard(const jit::Module& module) : key_(module._ivalue().get()) {
    ModeGate& g = mode_gate();
    std::unique_lock<std::mutex> lock(g.mu);
    const auto tid = std::this_thread::get_id();
    g.cv.wait(lock, [&] {
      auto it = g.entries.find(key_);
      if (it == g.entries.end()) return true;
      const auto& e = it->second;
      const bool only_foreign_exclusive =
          e.guards == 0 && e.exclusive_count > 0 && e.exclusive.count(tid) == 0;
      return e.pending == 0 && !only_foreign_exclusive;
    });
    ++g.entries[key_].runs;
  }
  ~RunModeGuard() {
    ModeGate& g = mode_gate();
    std::lock_guard<std::mutex> lock(g.mu);
    --g.entries[key_].runs;
    g.drop_if_idle(key_);
    g.cv.notify_all();
  }
  RunModeGuard(const RunModeGuard&) = delete;
  RunModeGuard& operator=(const RunModeGuard&) = delete;

 private:
  const c10::ivalue::Object* key_;
};

}  // namespace

Capture TappedModule::run(const std::vector<c10::IValue>& inputs,
                          const std::vector<std::string>& layers,
                          const CaptureOptions& options) const {
  const std::vector<std::string> selected = layers.empty() ? layers : select(layers);
  c10::IValue pool;
  if (options.reuse_buffers && options.detach && poolable_ && pool_) {
    pool = c10::IValue::make_capsule(c10::make_intrusive<detail::PoolCapsule>(pool_));
  }
  RunModeGuard mode(module_);
  begin_through_ops(selected, options.detach, false, std::move(pool));
  RecordingGuard guard;
  Capture capture;
  try {
    capture.output = module_.get_method(method_name_)(inputs);
  } catch (const std::exception& e) {
    TORCH_CHECK(false,
                "TappedModule::run: inputs must be accepted by the model's forward, but got ",
                describe_inputs(inputs), "; the model raised: ", error_text(e));
  }
  guard.active = false;
  capture.records = end_through_ops();
  return capture;
}

EvalMode::EvalMode(const torch::jit::Module& module, bool exclusive)
    : root_(module), owner_(std::this_thread::get_id()), exclusive_(exclusive) {
  ModeGate& g = mode_gate();
  std::unique_lock<std::mutex> lock(g.mu);
  const auto* key = module._ivalue().get();
  ModeGate::Entry* e = &g.entries[key];
  if (e->guards == 0 && e->exclusive_count == 0) {
    // The first guard switches modes: runs in flight (in the module's own mode) end first.
    ++e->pending;
    g.cv.wait(lock, [&] { return g.entries[key].runs == 0; });
    e = &g.entries[key];
    --e->pending;
  }
  if (exclusive_) {
    ++e->exclusive[owner_];
    ++e->exclusive_count;
  } else {
    ++e->guards;
  }
  for (const jit::Module& m : module.modules()) {
    if (!m.type()->hasAttribute("training")) continue;
    ModeGate::Flag& f = g.flags[m._ivalue().get()];
    if (f.count++ == 0) {
      // The first guard on this submodule saves its flag; the last one restores it.
      f.saved = m.is_training();
      jit::Module(m)._ivalue()->setAttr("training", false);
    }
    modes_.push_back(m);
  }
  g.cv.notify_all();
}

EvalMode::~EvalMode() {
  ModeGate& g = mode_gate();
  std::unique_lock<std::mutex> lock(g.mu);
  const auto* key = root_._ivalue().get();
  ModeGate::Entry* e = &g.entries[key];
  if (e->guards + e->exclusive_count == 1) {
    // The last guard switches back: runs in flight (in eval mode, on other threads) end first.
    ++e->pending;
    g.cv.wait(lock, [&] { return g.entries[key].runs == 0; });
    e = &g.entries[key];
    --e->pending;
  }
  for (auto& m : modes_) {
    auto it = g.flags.find(m._ivalue().get());
    if (it == g.flags.end()) continue;
    if (--it->second.count == 0) {
      m._ivalue()->setAttr("training", it->second.saved);
      g.flags.erase(it);
    }
  }
  if (exclusive_) {
    if (--e->exclusive[owner_] <= 0) e->exclusive.erase(owner_);
    --e->exclusive_count;
  } else {
    --e->guards;
  }
  g.drop_if_idle(key);
  g.cv.notify_all();
}

std::vector<std::pair<std::string, at::Tensor>> Capture::per_call_values() const {
  std::unordered_map<std::string, int64_t> calls, seen;
  for (const auto& r : records) ++calls[r.name];
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& r : records) {
    const int64_t k = ++seen[r.name];
    out.emplace_back(calls[r.name] > 1 ? r.name + "#" + std::to_string(k) : r.name, r.value);
  }
  return out;
}

std::vector<LayerInfo> TappedModule::list_layers(const std::vector<c10::IValue>& inputs) const {
  // Eval mode for the one forward, so that listing does not update BatchNorm running statistics;
  // every module's own flag is restored afterwards.
  EvalMode eval(module_, /*exclusive=*/true);

  at::NoGradGuard no_grad;
  begin_through_ops({}, true, /*shapes_only=*/true);
  RecordingGuard guard;
  try {
    module_.get_method(method_name_)(inputs);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "list_layers: inputs must be accepted by the model's forward, but got ",
                describe_inputs(inputs), "; the model raised: ", error_text(e));
  }
  guard.active = false;
  std::vector<LayerInfo> infos;
  std::unordered_map<std::string, size_t> index;
  for (const auto& r : end_through_ops()) {
    auto it = index.find(r.name);
    if (it != index.end()) {
      ++infos[it->second].calls;
      continue;
    }
    index.emplace(r.name, infos.size());
    infos.push_back(
        {r.name, layer_type(r.name), r.value.sizes().vec(), dtype_name(r.value.scalar_type()), 1});
  }
  return infos;
}

void TappedModule::release_buffers() const {
  if (pool_) pool_->drop_free();
}

size_t TappedModule::pooled_bytes() const {
  return pool_ ? pool_->bytes() : 0;
}

void TappedModule::save(const std::string& path) const {
  constexpr const char* fn = "TappedModule::save";
  // A unique temporary beside path (mkstemp; a fixed "<path>.tmp" would destroy a user's file of
  // that name and collide between concurrent saves), removed on every error path.
  detail::TempFile tmp(fn, path);
  tmp.close();
  try {
    module_.save(tmp.temp_path());
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, fn, ": path must be writable, but got '", path,
                "': ", e.what_without_backtrace());
  }
  tmp.commit();
}

// ---- Recording API ---------------------------------------------------------------------------

namespace detail {

void record_tap(const c10::IValue& value, const std::string& name, bool copy) {
  Recording* r = active_recording.get();
  if (r == nullptr) return;
  // Unselected layers cost a hash lookup, never a copy.
  if (!r->all && r->layers.count(name) == 0) return;
  record_value(*r, value, name, copy);
}

bool tap_active(const std::string& name) {
  const Recording* r = active_recording.get();
  return r != nullptr && !r->pool && (r->all || r->layers.count(name) != 0);
}

void begin_recording(const std::vector<std::string>& layers, bool detach, bool shapes_only,
                     const c10::IValue& pool) {
  TORCH_CHECK(!active_recording,
              "begin_recording: no recording must be active on this thread, but got one "
              "(a capture is not re-entrant; end the previous one first)");
  std::shared_ptr<RecordPool> buffers;
  if (!pool.isNone()) {
    auto* capsule = pool.isCapsule() ? dynamic_cast<PoolCapsule*>(pool.toCapsule().get()) : nullptr;
    TORCH_CHECK_VALUE(capsule != nullptr,
                      "begin_recording: pool must be None or a TappedModule's buffer pool, but "
                      "got a value of type ",
                      pool.tagKind());
    buffers = capsule->pool;
  }
  auto r = std::make_unique<Recording>();
  r->all = layers.empty();
  r->layers.insert(layers.begin(), layers.end());
  r->detach = detach;
  r->shapes_only = shapes_only;
  // Only measuring copies are pooled: records in the autograd graph are clones, as before.
  if (detach && !shapes_only) r->pool = std::move(buffers);
  active_recording = std::move(r);
}

std::vector<CaptureRecord> end_recording() {
  TORCH_CHECK(active_recording, "end_recording: a recording must be active on this thread, but ",
              "got none (call begin_recording first)");
  std::vector<CaptureRecord> out = std::move(active_recording->records);
  std::shared_ptr<RecordPool> pool = std::move(active_recording->pool);
  active_recording.reset();
  // The buffers of this capture's records are held by `out`: what is free now is what earlier
  // captures used and their callers dropped, so the pool keeps only the latest record set (and
  // what callers still hold).
  if (pool) pool->drop_free();
  return out;
}

}  // namespace detail
}  // namespace svcca
