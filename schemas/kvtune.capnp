# kvtune's stored records (RocksDB values) and wire messages (ZeroMQ frames).
# Field numbers are part of the on-disk and wire format: append, never renumber.
@0xe971c48ca44a9b71;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvtune::schema");

# Bumped when a stored record changes incompatibly; the store refuses a
# database written with another version.
const schemaVersion :UInt32 = 1;

struct KvFormat {
  enum Kind {
    int @0;
    fp8 @1;
    nvfp4 @2;
    full @3;
    engine @4;
  }
  kind @0 :Kind = full;
  bits @1 :UInt8 = 16;
  # kind engine: the engine dtype's name, e.g. "vllm:fp8" (engine_dtype.h).
  engineDtype @2 :Text;
}

# Where a query reads a token from (ENGINES.md, "Read rules").
enum ReadSource {
  fresh @0;
  cache @1;
}

struct PrecisionPair {
  key @0 :KvFormat;
  value @1 :KvFormat;
}

struct Scheme {
  enum Grouping {
    perToken @0;
    kivi @1;
  }
  enum ZeroPoint {
    int @0;
    float @1;
  }
  grouping @0 :Grouping;
  groupSize @1 :UInt32 = 32;
  residual @2 :UInt32 = 32;
  zeroPoint @3 :ZeroPoint;
  # The kvtuner target: KVTuner's own cache (grouping kivi is its
  # per-channel-asym setting; groupSize 0 is head_dim, residual may be 0).
  kvtuner @4 :Bool;
  # Where engine dtypes' per-layer scales come from (engine_dtype.h KvScales).
  kvScales @5 :KvScales;
  # llama.cpp's Hadamard rotation around its cache types (scheme.h Rotation).
  rotation @6 :Rotation;
}

enum Rotation {
  auto @0;
  on @1;
  off @2;
}

enum KvScales {
  one @0;
  calculated @1;
  calibrated @2;
}

# The canonical inputs of one evaluation; its canonical encoding is hashed
# into the evaluation key.
struct EvalRequest {
  modelSpec @0 :Text;
  modelFingerprint @1 :Text;
  dataSpec @2 :Text;
  dataFingerprint @3 :Text;
  seqLen @4 :UInt32;
  scheme @5 :Scheme;
  layers @6 :List(PrecisionPair);
  metric @7 :Text = "kl";
  # The prompt length T0 of every sequence without its own (JSONL "prompt"),
  # and the read rule; 0 and fresh leave the canonical encoding, and so the
  # keys of evaluations without them, as they were.
  promptTokens @8 :UInt32;
  readPrefill @9 :ReadSource;
  readCurrent @10 :ReadSource;
  # Free-running greedy generation from the first promptTokens tokens of the
  # first `prompts` sequences, newTokens each (a search's validation); none
  # when prompts is 0.
  freeRun :group {
    prompts @11 :UInt32;
    promptTokens @12 :UInt32;
    newTokens @13 :UInt32;
  }
}

struct EvalResult {
  kl @0 :Float64;
  deltaNll @1 :Float64;
  pplFp @2 :Float64;
  pplQ @3 :Float64;
  top1Agreement @4 :Float64;
  avgBits @5 :Float64;
  bytesPerToken @6 :Float64;
  attnRelErr @7 :List(Float64);
  tokens @8 :UInt64;
  workerId @9 :Text;
  seconds @10 :Float64;
  # KL over every position, the prompt's included (kl is over the
  # continuation). 0 in records written before it existed, whose
  # evaluations had no prompt: read it as kl there.
  klAll @11 :Float64;
  # Set when the request asked for a free run (freeRunPrompts > 0).
  freeRunPrompts @12 :UInt32;
  freeRunAgreement @13 :Float64;
  freeRunFirstDivergence @14 :Float64;
  # Per layer, the k_scale / v_scale an engine dtype with a per-layer scale
  # applies (from the job's kv_scales and the calibration amax); 0 elsewhere.
  # Empty when no layer has one.
  kScales @15 :List(Float32);
  vScales @16 :List(Float32);
}

# What a worker learned about a job's model and calibration data (the job's
# "describe" step): fixes the fingerprints its evaluation keys are built from.
struct ModelInfo {
  name @0 :Text;
  architecture @1 :Text;
  synthetic @2 :Bool;
  layers @3 :UInt32;
  kvHeads @4 :UInt32;
  headDim @5 :UInt32;
  vocabSize @6 :UInt32;
  fingerprint @7 :Text;
  dataFingerprint @8 :Text;
  sequences @9 :UInt32;
  tokens @10 :UInt64;
  validationDataFingerprint @11 :Text;  # a search's validation data, when it has one
}

struct JobRecord {
  enum State {
    queued @0;
    running @1;
    done @2;
    failed @3;
    cancelled @4;
  }
  id @0 :Text;
  specJson @1 :Text;
  state @2 :State;
  createdMs @3 :Int64;
  updatedMs @4 :Int64;
  error @5 :Text;
  model @6 :ModelInfo;  # set once the job has been described
}

struct TaskRecord {
  enum State {
    pending @0;
    leased @1;
    done @2;
    failed @3;
  }
  id @0 :Text;
  jobId @1 :Text;
  evalKey @2 :Data;
  request @3 :EvalRequest;
  state @4 :State;
  attempts @5 :UInt32;
  errors @6 :List(Text);
  config @7 :Text;  # the configuration as the job named it
}

# Worker -> coordinator.
struct WorkerMessage {
  union {
    hello :group {
      workerId @0 :Text;
      device @1 :Text;
      memoryBytes @2 :UInt64;
      threads @3 :UInt32;
      loadedModels @4 :List(Text);
    }
    credit :group {
      count @5 :UInt32;
    }
    heartbeat :group {
      busyTaskId @6 :Text;  # empty when idle
      referenceBytes @17 :UInt64;  # what the loaded evaluators' references hold
    }
    result :group {
      taskId @7 :Text;
      evalKey @8 :Data;
      result @9 :EvalResult;
    }
    failure :group {
      taskId @10 :Text;
      evalKey @11 :Data;
      error @12 :Text;
    }
    goodbye :group {
      handBackTaskId @13 :Text;  # empty when no task is handed back
    }
    described :group {
      taskId @14 :Text;
      describeKey @15 :Data;
      model @16 :ModelInfo;
    }
  }
}

# Coordinator -> worker.
struct CoordinatorMessage {
  union {
    task :group {
      taskId @0 :Text;
      evalKey @1 :Data;
      request @2 :EvalRequest;
    }
    heartbeat @3 :Void;
    reject :group {
      reason @4 :Text;
    }
    # Load a model and its calibration data and report what they are (the
    # fingerprints evaluation keys are built from); answered by `described`
    # or `failure`.
    describe :group {
      taskId @5 :Text;
      describeKey @6 :Data;
      modelSpec @7 :Text;
      dataSpec @8 :Text;
      seqLen @9 :UInt32;
      promptTokens @10 :UInt32;
      validationDataSpec @11 :Text;  # also described (its fingerprint) when set
    }
  }
}
