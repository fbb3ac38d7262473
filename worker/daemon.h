// The worker daemon, `kvtune worker --connect ENDPOINT`: one process per GPU
// (or CPU host) that pulls evaluations from a coordinator and runs them.
//
// It speaks the zguide's "Paranoid Pirate" worker side over the transport of
// schemas/include/kvtune/schemas/transport.h: hello and credit on start, a heartbeat every
// --heartbeat-ms (idle or busy), one evaluation at a time on its own thread
// while the main thread keeps the socket, hello again when the coordinator
// went silent or says it does not know this worker, and a goodbye (handing
// back an unfinished evaluation) on SIGTERM/SIGINT. Loaded (model, data)
// pairs, with their unquantized reference, stay in a small LRU cache so that a
// job's evaluations pay for loading once.
//
// Torch-free interface. The parts: daemon.cpp (command line, protocol loop),
// eval_runner.h (the evaluation thread), model_cache.h (the cache; the only
// part that includes LibTorch), daemon_common.h (options, logging), health.h
// (--health-file and `kvtune worker health`, for probes).
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kvtune::worker {

// `worker [--connect ENDPOINT] [--id ID] [--device cpu|cuda[:N]] ...`: runs
// until SIGTERM/SIGINT (or --max-tasks); returns the exit code. `worker
// health ...` runs the health check instead (health.h).
int worker_command(const std::vector<std::string>& args);

// A least-recently-used cache of at most `capacity` owned values. Not
// thread-safe. Values are destroyed when evicted (that releases a model's
// memory), so pointers from find() stay valid only until the next call that
// may evict (make_room(), insert()).
template <class Key, class Value>
class LruCache {
 public:
  explicit LruCache(std::size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  std::size_t capacity() const { return capacity_; }
  std::size_t size() const { return entries_.size(); }

  // The value under `key`, now the most recently used; nullptr when absent.
  Value* find(const Key& key) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first == key) {
        entries_.splice(entries_.begin(), entries_, it);
        return entries_.front().second.get();
      }
    }
    return nullptr;
  }

  // Evicts least recently used values until one more fits: call before
  // building a large value, so that the old one is freed first.
  void make_room() {
    while (!entries_.empty() && entries_.size() >= capacity_) entries_.pop_back();
  }

  // Stores `value` under `key` (replacing any value there) as the most
  // recently used, evicting as needed; returns it.
  Value& insert(const Key& key, std::unique_ptr<Value> value) {
    erase(key);
    make_room();
    entries_.emplace_front(key, std::move(value));
    return *entries_.front().second;
  }

  // Drops the value under `key`, if any.
  void erase(const Key& key) {
    entries_.remove_if([&](const auto& entry) { return entry.first == key; });
  }

  // Calls f(key, value) for each value, most recently used first.
  template <class F>
  void for_each(F f) const {
    for (const auto& entry : entries_) f(entry.first, *entry.second);
  }

  // Keys, most recently used first.
  std::vector<Key> keys() const {
    std::vector<Key> out;
    for (const auto& entry : entries_) out.push_back(entry.first);
    return out;
  }

 private:
  std::size_t capacity_;
  std::list<std::pair<Key, std::unique_ptr<Value>>> entries_;
};

}  // namespace kvtune::worker
