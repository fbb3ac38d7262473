// The coordinator's HTTP API: routes requests to job operations and answers
// in JSON. GET /healthz, /metrics (Prometheus text), /v1/workers, /v1/jobs,
// /v1/jobs/{id}, /v1/registry, /v1/registry/{id},
// /v1/registry/{id}/best?max_bits=B&max_kl=E&format=F; POST /v1/jobs (a job
// spec) and /v1/jobs/{id}/cancel. The web page (web.h): GET / and its files,
// and the job views /v1/jobs/{id}/pareto.svg, /sensitivity.svg, /exports. Reads the store for results and registry
// entries; changes state only through Jobs (submit, cancel).
#pragma once

#include <map>
#include <string>

#include "http.h"
#include "jobs.h"
#include "ledger.h"
#include "scheduler.h"
#include "state.h"

namespace kvtune::transport {
class CoordinatorSocket;
}

namespace kvtune::coord {

class Api {
 public:
  // `server` is the HTTP server whose handler calls handle() (for its
  // refused-request count in /metrics).
  Api(Jobs& jobs, const Ledger& ledger, const Scheduler& scheduler,
      const std::map<std::string, WorkerInfo>& workers, Counters& counters,
      const transport::CoordinatorSocket& socket, const http::Server& server)
      : jobs_(jobs),
        ledger_(ledger),
        scheduler_(scheduler),
        workers_(workers),
        counters_(counters),
        socket_(socket),
        server_(server) {}

  http::Response handle(const http::Request& r);

 private:
  http::Response post_job(const std::string& body);
  http::Response registry_request(const std::string& path, const std::string& query);
  http::Response cancel_job(Job& job);
  json progress_json(const Job& job) const;
  json job_json(const Job& job, bool full) const;
  json jobs_json() const;
  json workers_json() const;
  std::string metrics_text();

  Jobs& jobs_;
  const Ledger& ledger_;
  const Scheduler& scheduler_;
  const std::map<std::string, WorkerInfo>& workers_;
  Counters& counters_;
  const transport::CoordinatorSocket& socket_;
  const http::Server& server_;
};

}  // namespace kvtune::coord
