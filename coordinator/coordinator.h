// The coordinator: the one process of a kvtune cluster that holds state. It
// accepts jobs over HTTP, expands them into evaluations, leases those to the
// workers connected to its ZeroMQ ROUTER socket, and persists every job, task
// and result in its RocksDB store, from which a restarted coordinator resumes
// (after `kill -9` too). Evaluations are content-addressed: one whose result
// is stored is never dispatched again, by any job.
//
// It runs on one thread: each turn of run() drains the worker socket, writes
// what arrived to the store in one synced batch, serves ready HTTP requests
// (Boost.Asio polled), expires silent workers and dispatches work.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "scheduler.h"

namespace kvtune {

struct CoordinatorOptions {
  std::filesystem::path db;                   // RocksDB directory (created when missing)
  std::string api = "127.0.0.1:8470";         // HTTP API, HOST:PORT (port 0: ephemeral)
  std::string bind = "tcp://127.0.0.1:8471";  // worker endpoint (port 0: ephemeral)
  std::string api_token;                      // bearer token; empty: none
  std::size_t max_request_bytes = 1 << 20;
  std::filesystem::path curve_secret_file;  // coordinator key pair; empty: plaintext
  std::filesystem::path curve_authorized;   // workers' public keys (with CURVE)
  Scheduler::Options scheduler;
  std::chrono::milliseconds heartbeat_interval{1000};
  bool log = true;  // one line per event on stderr
};

class Coordinator {
 public:
  // Opens the store (resuming its unfinished jobs), binds the HTTP API and
  // the worker socket. Throws kvtune::Error naming the database, address or
  // key file at fault.
  explicit Coordinator(const CoordinatorOptions& options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // The addresses actually bound (with real ports).
  std::string api_address() const;
  std::string worker_endpoint() const;

  // Serves until `stop` becomes true. Throws kvtune::Error naming the
  // database and the cause when the store cannot write (a full disk, an I/O
  // error): the loop stops at once and the API closes; what the store holds
  // is consistent (a new Coordinator on the database resumes from it, as
  // after kill -9); this one can only be destroyed (the process exits).
  void run(const std::atomic<bool>& stop);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtune
