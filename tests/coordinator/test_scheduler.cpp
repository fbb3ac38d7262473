// Tests of the coordinator's scheduler: leases, credit, retries and
// idempotent results, with injected time.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "kvtune/common/error.h"
#include "scheduler.h"

namespace kvtune {
namespace {

using namespace std::chrono_literals;
using Clock = Scheduler::Clock;
using State = Scheduler::State;

const Clock::time_point t0{};  // the epoch of the injected clock

Scheduler::Task task(const std::string& id, const std::string& key,
                     const std::string& job = "job-1") {
  return Scheduler::Task{id, job, key, "payload-" + key};
}

std::vector<std::string> ids(const std::vector<Scheduler::Task>& tasks) {
  std::vector<std::string> out;
  for (const auto& t : tasks) out.push_back(t.id);
  return out;
}

// Leases the next assignment and checks who gets which key.
void expect_assignment(Scheduler& s, Clock::time_point now, const std::string& worker,
                       const std::string& key) {
  auto a = s.next_assignment(now);
  ASSERT_TRUE(a.has_value()) << "expected " << key << " for " << worker;
  EXPECT_EQ(a->worker_id, worker);
  EXPECT_EQ(a->task.eval_key, key);
}

TEST(SchedulerOptions, RejectsNonsense) {
  EXPECT_THROW(Scheduler(Scheduler::Options{60s, 10s, 0}), Error);
  EXPECT_THROW(Scheduler(Scheduler::Options{0s, 10s, 3}), Error);
  EXPECT_NO_THROW(Scheduler());
}

TEST(SchedulerDispatch, FifoAndRoundRobinAcrossTwoWorkers) {
  Scheduler s;
  for (const char* k : {"k1", "k2", "k3", "k4"}) {
    EXPECT_EQ(s.add(task(std::string("t-") + k, k)), Scheduler::Added::kQueued);
  }
  s.worker_seen("w1", t0);
  s.worker_seen("w2", t0);
  EXPECT_TRUE(s.credit("w1", 5, t0));
  EXPECT_TRUE(s.credit("w2", 5, t0));
  expect_assignment(s, t0, "w1", "k1");
  expect_assignment(s, t0, "w2", "k2");
  expect_assignment(s, t0, "w1", "k3");
  expect_assignment(s, t0, "w2", "k4");
  EXPECT_FALSE(s.next_assignment(t0).has_value());
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.leased(), 4u);
  EXPECT_EQ(s.holder("k3"), "w1");
  EXPECT_EQ(s.state("k4"), State::kLeased);
  auto a = s.complete("w1", "k1", t0 + 1s);
  EXPECT_EQ(ids(a), std::vector<std::string>{"t-k1"});
  EXPECT_EQ(s.state("k1"), State::kUnknown);
  EXPECT_EQ(s.leased(), 3u);
}

TEST(SchedulerDispatch, CreditLimitsAssignments) {
  Scheduler s;
  for (const char* k : {"k1", "k2", "k3"}) s.add(task(k, k));
  EXPECT_FALSE(s.next_assignment(t0).has_value());  // no workers
  EXPECT_FALSE(s.credit("stranger", 3, t0));        // no hello, no credit
  s.worker_seen("w1", t0);
  EXPECT_FALSE(s.next_assignment(t0).has_value());  // no credit yet
  s.credit("w1", 2, t0);
  expect_assignment(s, t0, "w1", "k1");
  expect_assignment(s, t0, "w1", "k2");
  EXPECT_FALSE(s.next_assignment(t0).has_value());
  ASSERT_EQ(s.workers().size(), 1u);
  EXPECT_EQ(s.workers()[0].credit, 0u);
  EXPECT_EQ(s.workers()[0].leases, 2u);
  EXPECT_EQ(s.queued(), 1u);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k3");
}

TEST(SchedulerDispatch, DuplicateKeysDispatchOnceAndCompleteAllWaiters) {
  Scheduler s;
  EXPECT_EQ(s.add(task("a", "k", "job-1")), Scheduler::Added::kQueued);
  EXPECT_EQ(s.add(task("b", "k", "job-2")), Scheduler::Added::kAttached);
  EXPECT_EQ(s.add(task("c", "other")), Scheduler::Added::kQueued);
  EXPECT_EQ(s.add(task("d", "cached-key"), /*cached=*/true), Scheduler::Added::kDone);
  EXPECT_EQ(s.state("cached-key"), State::kUnknown);
  EXPECT_EQ(s.queued(), 2u);
  s.worker_seen("w1", t0);
  s.credit("w1", 10, t0);
  expect_assignment(s, t0, "w1", "k");
  // Attaching to a leased evaluation works too.
  EXPECT_EQ(s.add(task("e", "k", "job-3")), Scheduler::Added::kAttached);
  expect_assignment(s, t0, "w1", "other");
  EXPECT_FALSE(s.next_assignment(t0).has_value());  // "k" went out once
  auto done = s.complete("w1", "k", t0 + 1s);
  EXPECT_EQ(ids(done), (std::vector<std::string>{"a", "b", "e"}));
  EXPECT_EQ(done[1].job_id, "job-2");
  EXPECT_TRUE(s.complete("w1", "k", t0 + 2s).empty());  // duplicate
}

TEST(SchedulerFaults, SilentWorkerIsReplacedAndItsLateResultIgnored) {
  Scheduler s(Scheduler::Options{60s, 10s, 3});
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k");
  s.worker_seen("w2", t0);
  s.credit("w2", 1, t0);
  s.worker_seen("w2", t0 + 8s);
  // Within the timeout nothing happens.
  auto r = s.expire(t0 + 10s);
  EXPECT_TRUE(r.lost_workers.empty());
  EXPECT_EQ(s.holder("k"), "w1");
  r = s.expire(t0 + 11s);
  EXPECT_EQ(r.lost_workers, std::vector<std::string>{"w1"});
  EXPECT_TRUE(r.failed.empty());
  EXPECT_EQ(s.state("k"), State::kQueued);
  EXPECT_EQ(s.workers().size(), 1u);
  expect_assignment(s, t0 + 11s, "w2", "k");
  EXPECT_EQ(s.attempts("k"), 2);
  auto done = s.complete("w2", "k", t0 + 12s);
  EXPECT_EQ(ids(done), std::vector<std::string>{"a"});
  // w1's late result: a duplicate, no double completion.
  EXPECT_TRUE(s.complete("w1", "k", t0 + 13s).empty());
  EXPECT_EQ(s.leased(), 0u);
  EXPECT_EQ(s.queued(), 0u);
}

TEST(SchedulerFaults, LateResultWhileReleasedIsAcceptedOnce) {
  Scheduler s;
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k");
  s.worker_seen("w2", t0 + 20s);
  s.credit("w2", 1, t0 + 20s);
  s.expire(t0 + 20s);  // w1 silent: "k" requeued
  expect_assignment(s, t0 + 20s, "w2", "k");
  // w1's result arrives while w2 holds the lease: valid work, accepted.
  EXPECT_EQ(ids(s.complete("w1", "k", t0 + 21s)), std::vector<std::string>{"a"});
  EXPECT_EQ(s.workers()[0].leases, 0u);  // w2's lease released
  EXPECT_EQ(s.leased(), 0u);
  EXPECT_TRUE(s.complete("w2", "k", t0 + 22s).empty());
}

TEST(SchedulerFaults, LeaseDeadlineRequeuesEvenWhileWorkerHeartbeats) {
  Scheduler s(Scheduler::Options{30s, 10s, 3});
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  s.credit("w1", 2, t0);
  expect_assignment(s, t0, "w1", "k");
  for (auto t = 5s; t <= 35s; t += 5s) {
    s.worker_seen("w1", t0 + t);
    auto r = s.expire(t0 + t);
    EXPECT_TRUE(r.lost_workers.empty());
    EXPECT_EQ(s.state("k"), t <= 30s ? State::kLeased : State::kQueued) << t.count();
  }
  EXPECT_EQ(s.attempts("k"), 1);
  expect_assignment(s, t0 + 35s, "w1", "k");
  EXPECT_EQ(s.attempts("k"), 2);
}

TEST(SchedulerFaults, ThreeFailuresOnThreeWorkersFailWithTheirMessages) {
  Scheduler s;
  s.add(task("a", "k", "job-1"));
  s.add(task("b", "k", "job-2"));
  for (const char* w : {"w1", "w2", "w3"}) {
    s.worker_seen(w, t0);
    s.credit(w, 1, t0);
  }
  expect_assignment(s, t0, "w1", "k");
  EXPECT_FALSE(s.fail("w2", "k", "not my lease", t0).has_value());  // ignored
  EXPECT_FALSE(s.fail("w1", "k", "out of memory", t0).has_value());
  EXPECT_EQ(s.state("k"), State::kQueued);
  expect_assignment(s, t0, "w2", "k");
  EXPECT_FALSE(s.fail("w2", "k", "NaN logits", t0).has_value());
  expect_assignment(s, t0, "w3", "k");
  EXPECT_EQ(s.attempts("k"), 3);
  auto failure = s.fail("w3", "k", "model file missing", t0);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->eval_key, "k");
  EXPECT_EQ(ids(failure->tasks), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(failure->errors, (std::vector<std::string>{"w1: out of memory", "w2: NaN logits",
                                                       "w3: model file missing"}));
  EXPECT_EQ(s.state("k"), State::kUnknown);
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.leased(), 0u);
}

TEST(SchedulerFaults, SilenceCountsTowardsFailure) {
  Scheduler s(Scheduler::Options{60s, 10s, 2});
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k");
  EXPECT_FALSE(s.fail("w1", "k", "crashed", t0).has_value());
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k");
  auto r = s.expire(t0 + 11s);
  EXPECT_EQ(r.lost_workers, std::vector<std::string>{"w1"});
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed[0].errors,
            (std::vector<std::string>{"w1: crashed", "w1: worker went silent"}));
}

TEST(SchedulerFaults, HandBackDoesNotCountAnAttempt) {
  Scheduler s(Scheduler::Options{60s, 10s, 1});
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k");
  EXPECT_EQ(s.attempts("k"), 1);
  EXPECT_FALSE(s.hand_back("w2", "k", t0));  // not its lease
  EXPECT_TRUE(s.hand_back("w1", "k", t0));
  EXPECT_EQ(s.attempts("k"), 0);
  EXPECT_EQ(s.state("k"), State::kQueued);
  EXPECT_TRUE(s.worker_gone("w1").empty());
  s.worker_seen("w2", t0);
  s.credit("w2", 1, t0);
  expect_assignment(s, t0, "w2", "k");
  // With max_attempts 1 a counted attempt would have failed it here.
  EXPECT_EQ(ids(s.complete("w2", "k", t0)), std::vector<std::string>{"a"});
}

TEST(SchedulerFaults, RequeuedWorkGoesToTheFront) {
  Scheduler s;
  for (const char* k : {"k1", "k2", "k3", "k4"}) s.add(task(k, k));
  s.worker_seen("w1", t0);
  s.credit("w1", 2, t0);
  expect_assignment(s, t0, "w1", "k1");
  expect_assignment(s, t0, "w1", "k2");
  // Both leases come back (goodbye); they go ahead of k3, in arrival order.
  EXPECT_TRUE(s.worker_gone("w1").empty());
  EXPECT_EQ(s.attempts("k1"), 1);
  s.worker_seen("w2", t0);
  s.credit("w2", 10, t0);
  expect_assignment(s, t0, "w2", "k1");
  expect_assignment(s, t0, "w2", "k2");
  expect_assignment(s, t0, "w2", "k3");
  // A failure requeues ahead of k4 too.
  s.fail("w2", "k3", "boom", t0);
  expect_assignment(s, t0, "w2", "k3");
  expect_assignment(s, t0, "w2", "k4");
}

TEST(SchedulerResults, UnknownKeyIsIgnored) {
  Scheduler s;
  s.add(task("a", "k"));
  s.worker_seen("w1", t0);
  std::vector<Scheduler::Task> done;
  EXPECT_NO_THROW(done = s.complete("w1", "no-such-key", t0));
  EXPECT_TRUE(done.empty());
  EXPECT_NO_THROW(EXPECT_TRUE(s.complete("ghost", "no-such-key", t0).empty()));
  EXPECT_FALSE(s.fail("w1", "no-such-key", "x", t0).has_value());
  EXPECT_FALSE(s.hand_back("w1", "no-such-key", t0));
  EXPECT_TRUE(s.worker_gone("ghost").empty());
  EXPECT_EQ(s.queued(), 1u);
  EXPECT_EQ(s.state("k"), State::kQueued);
}

TEST(SchedulerResults, ResultForQueuedKeyCompletesItWithoutDispatch) {
  Scheduler s;
  s.add(task("a", "k1"));
  s.add(task("b", "k2"));
  EXPECT_EQ(ids(s.complete("w9", "k1", t0)), std::vector<std::string>{"a"});
  EXPECT_EQ(s.queued(), 1u);
  s.worker_seen("w1", t0);
  s.credit("w1", 5, t0);
  expect_assignment(s, t0, "w1", "k2");  // the stale entry for k1 is skipped
  EXPECT_FALSE(s.next_assignment(t0).has_value());
  // Re-adding k1 starts a new evaluation.
  EXPECT_EQ(s.add(task("c", "k1")), Scheduler::Added::kQueued);
  expect_assignment(s, t0, "w1", "k1");
}

}  // namespace
}  // namespace kvtune

namespace kvtune {
namespace {

TEST(SchedulerCancel, DropsTheJobsTasksButKeepsSharedEvaluations) {
  Scheduler s;
  s.add(task("a1", "k1", "job-a"));
  s.add(task("a2", "k2", "job-a"));
  s.add(task("b1", "k2", "job-b"));  // shares k2 with job-a
  s.add(task("a3", "k3", "job-a"));
  s.worker_seen("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k1");  // k1 is leased when job-a is cancelled
  EXPECT_EQ(s.cancel_job("job-a"), 3u);
  EXPECT_EQ(s.queued(), 1u);
  EXPECT_EQ(s.leased(), 0u);
  EXPECT_EQ(s.state("k1"), State::kUnknown);
  EXPECT_EQ(s.state("k3"), State::kUnknown);
  s.credit("w1", 5, t0);
  auto a = s.next_assignment(t0);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->task.id, "b1");
  EXPECT_FALSE(s.next_assignment(t0).has_value());
  EXPECT_TRUE(s.complete("w1", "k1", t0).empty());  // the cancelled lease's late result
  EXPECT_EQ(ids(s.complete("w1", "k2", t0)), std::vector<std::string>{"b1"});
}

}  // namespace
}  // namespace kvtune

namespace kvtune {
namespace {

TEST(SchedulerWorkers, HelloStartsANewSessionWithoutCreditButKeepsLeases) {
  Scheduler s;
  s.add(task("t1", "k1"));
  s.add(task("t2", "k2"));
  s.hello("w1", t0);
  s.credit("w1", 1, t0);
  expect_assignment(s, t0, "w1", "k1");
  s.credit("w1", 1, t0);   // granted, not yet used
  s.hello("w1", t0 + 1s);  // e.g. after the coordinator stalled: credit restarts
  EXPECT_FALSE(s.next_assignment(t0 + 1s).has_value());
  EXPECT_EQ(s.holder("k1"), "w1");
  s.credit("w1", 1, t0 + 1s);
  expect_assignment(s, t0 + 1s, "w1", "k2");
  EXPECT_FALSE(s.next_assignment(t0 + 1s).has_value());
}

}  // namespace
}  // namespace kvtune
