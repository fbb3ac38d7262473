// Calibration data: token-id files, JSONL and sequences sampled from the model,
// and the errors that point a user at the bad file, line, position and id.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>

#include "../support/shared_files.h"
#include "../support/temp_dir.h"
#include "calibration.h"
#include "kvtune/common/error.h"
#include "llama.h"

namespace kvtune::worker {
namespace {

namespace fs = std::filesystem;

using kvtune::testing::kStoriesModel;
using kvtune::testing::message_of;

using kvtune::testing::TempDir;

void write_ids(const std::string& path, const std::vector<uint32_t>& ids, size_t width) {
  std::ofstream out(path, std::ios::binary);
  for (uint32_t id : ids) {
    for (size_t b = 0; b < width; ++b) out.put(static_cast<char>((id >> (8 * b)) & 0xff));
  }
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Checks that an error message names every one of `parts`.
void expect_mentions(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos)
        << "the message does not mention '" << part << "': " << message;
  }
}

std::string tokens_line(int64_t count, int64_t first = 1) {
  std::string line = "{\"tokens\": [";
  for (int64_t i = 0; i < count; ++i) line += (i ? "," : "") + std::to_string(first + i % 100);
  return line + "]}";
}

class CalibrationFiles : public ::testing::Test {
 protected:
  const Model model_ = make_demo_model();  // vocab 512, context 512
  TempDir dir_;
};

TEST_F(CalibrationFiles, U16IsCutIntoSequencesAndTheTrailingPartialDropped) {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 23; ++i) ids.push_back(300 + i);  // 300 = 0x012c: both bytes matter
  const std::string path = dir_.file("data.u16");
  write_ids(path, ids, 2);
  const CalibrationData data = load_calibration(path, 5, model_);
  EXPECT_EQ(data.spec, path);
  ASSERT_EQ(data.sequences.size(), 4u);
  for (size_t s = 0; s < 4; ++s) {
    ASSERT_EQ(data.sequences[s].size(), 5u);
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(data.sequences[s][i], 300 + int64_t(s * 5 + i));
  }
  expect_mentions(data.note, {"3 tokens"});
}

TEST_F(CalibrationFiles, U32ExactMultipleHasNoNote) {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 12; ++i) ids.push_back(511 - i);
  const std::string path = dir_.file("data.u32");
  write_ids(path, ids, 4);
  const CalibrationData data = load_calibration(path, 4, model_);
  ASSERT_EQ(data.sequences.size(), 3u);
  EXPECT_EQ(data.sequences[2], (std::vector<int64_t>{503, 502, 501, 500}));
  EXPECT_TRUE(data.note.empty()) << data.note;
}

TEST_F(CalibrationFiles, U32TrailingPartialIsNoted) {
  const std::string path = dir_.file("data.u32");
  write_ids(path, {1, 2, 3, 4, 5, 6, 7}, 4);
  const CalibrationData data = load_calibration(path, 3, model_);
  ASSERT_EQ(data.sequences.size(), 2u);
  EXPECT_EQ(data.sequences[1], (std::vector<int64_t>{4, 5, 6}));
  expect_mentions(data.note, {"1 tokens"});
}

TEST_F(CalibrationFiles, JsonlHoldsVariableLengthSequences) {
  const std::string path = dir_.file("data.jsonl");
  write_text(path, "{\"tokens\": [1, 2, 3]}\n\n{\"tokens\":[5]}\n   \n" + tokens_line(10) + "\n");
  const CalibrationData data = load_calibration(path, 0, model_);  // seq_len is ignored
  ASSERT_EQ(data.sequences.size(), 3u);
  EXPECT_EQ(data.sequences[0], (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(data.sequences[1], (std::vector<int64_t>{5}));
  EXPECT_EQ(data.sequences[2].size(), 10u);
}

TEST_F(CalibrationFiles, IdBeyondTheVocabularyNamesFilePositionAndId) {
  const std::string path = dir_.file("bad.u16");
  write_ids(path, {1, 2, 3, 4, 5, 600, 7, 8}, 2);
  expect_mentions(message_of([&] { load_calibration(path, 4, model_); }),
                  {path, "sequence 1", "position 1", "600", "512"});
  const std::string jsonl = dir_.file("bad.jsonl");
  write_text(jsonl, "{\"tokens\": [1, 2]}\n{\"tokens\": [1, 2, 512]}\n");
  expect_mentions(message_of([&] { load_calibration(jsonl, 0, model_); }),
                  {jsonl + ":2", "position 2", "512"});
  write_text(jsonl, "{\"tokens\": [-1]}\n");
  expect_mentions(message_of([&] { load_calibration(jsonl, 0, model_); }),
                  {jsonl + ":1", "position 0", "-1"});
}

TEST_F(CalibrationFiles, SequencesLongerThanTheContextAreRejected) {
  const std::string jsonl = dir_.file("long.jsonl");
  write_text(jsonl, tokens_line(3) + "\n" + tokens_line(513) + "\n");
  expect_mentions(message_of([&] { load_calibration(jsonl, 0, model_); }),
                  {jsonl + ":2", "513", "512"});
  const std::string u16 = dir_.file("long.u16");
  write_ids(u16, std::vector<uint32_t>(1200, 7), 2);
  expect_mentions(message_of([&] { load_calibration(u16, 513, model_); }), {"--seq-len", "513"});
  expect_mentions(message_of([&] { load_calibration(u16, 1, model_); }), {"--seq-len", "1"});
}

TEST_F(CalibrationFiles, MalformedJsonlNamesTheLine) {
  const std::string path = dir_.file("bad.jsonl");
  write_text(path, tokens_line(3) + "\n\n{\"tokens\": [1, 2\n");
  expect_mentions(message_of([&] { load_calibration(path, 0, model_); }), {path + ":3", "JSON"});
  write_text(path, "{\"ids\": [1, 2]}\n");
  expect_mentions(message_of([&] { load_calibration(path, 0, model_); }), {path + ":1", "tokens"});
  write_text(path, "{\"tokens\": [1, 2.5]}\n");
  expect_mentions(message_of([&] { load_calibration(path, 0, model_); }),
                  {path + ":1", "position 1", "2.5", "integer"});
  write_text(path, "\n\n");
  expect_mentions(message_of([&] { load_calibration(path, 0, model_); }), {path, "no sequences"});
}

TEST_F(CalibrationFiles, OddSizedAndEmptyTokenFilesAreRejected) {
  const std::string odd = dir_.file("odd.u16");
  write_text(odd, "abc");
  expect_mentions(message_of([&] { load_calibration(odd, 2, model_); }),
                  {odd, "3 bytes", "multiple of 2"});
  const std::string odd32 = dir_.file("odd.u32");
  write_text(odd32, "abcdef");
  expect_mentions(message_of([&] { load_calibration(odd32, 2, model_); }),
                  {odd32, "multiple of 4"});
  const std::string empty = dir_.file("empty.u16");
  write_text(empty, "");
  expect_mentions(message_of([&] { load_calibration(empty, 2, model_); }), {empty, "empty"});
  const std::string short_file = dir_.file("short.u16");
  write_ids(short_file, {1, 2, 3}, 2);
  expect_mentions(message_of([&] { load_calibration(short_file, 4, model_); }),
                  {short_file, "3 tokens", "--seq-len 4"});
}

TEST_F(CalibrationFiles, UnknownFormsAndMissingFilesAreRejected) {
  expect_mentions(message_of([&] { load_calibration(dir_.file("data.txt"), 8, model_); }),
                  {"data.txt", "PATH.u16", "PATH.u32", "PATH.jsonl", "sample:N:L:SEED"});
  const std::string missing = dir_.file("missing.u16");
  expect_mentions(message_of([&] { load_calibration(missing, 8, model_); }), {missing});
  const std::string missing_jsonl = dir_.file("missing.jsonl");
  expect_mentions(message_of([&] { load_calibration(missing_jsonl, 8, model_); }), {missing_jsonl});
}

class CalibrationSampling : public ::testing::Test {
 protected:
  const Model model_ = make_demo_model();
};

TEST_F(CalibrationSampling, IsDeterministicForASeedAndStartsWithBos) {
  const CalibrationData a = load_calibration("sample:3:20:42", 999, model_);
  const CalibrationData b = load_calibration("sample:3:20:42", 999, model_);
  const CalibrationData other = load_calibration("sample:3:20:43", 999, model_);
  EXPECT_EQ(a.spec, "sample:3:20:42");
  ASSERT_EQ(a.sequences.size(), 3u);
  EXPECT_EQ(a.sequences, b.sequences);
  EXPECT_NE(a.sequences, other.sequences);
  EXPECT_NE(a.sequences[0], a.sequences[1]);
  for (const auto& seq : a.sequences) {
    ASSERT_EQ(seq.size(), 20u);
    EXPECT_EQ(seq[0], 1) << "BOS";
    for (int64_t id : seq) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, model_.config.vocab_size);
    }
  }
  // Each sequence has its own random stream: asking for fewer keeps the first.
  EXPECT_EQ(load_calibration("sample:1:20:42", 0, model_).sequences[0], a.sequences[0]);
}

TEST_F(CalibrationSampling, BadSpecsNameThePartAtFault) {
  const auto message = [&](const std::string& spec) {
    return message_of([&] { load_calibration(spec, 0, model_); });
  };
  expect_mentions(message("sample:x:10:1"), {"sample:x:10:1", "N", "'x'"});
  expect_mentions(message("sample:0:10:1"), {"N = 0"});
  expect_mentions(message("sample:-2:10:1"), {"N = -2"});
  expect_mentions(message("sample:2:1:1"), {"L = 1"});
  expect_mentions(message("sample:2:513:1"), {"L = 513", "512"});
  expect_mentions(message("sample:2:10q:1"), {"L", "'10q'"});
  expect_mentions(message("sample:2:10:"), {"SEED", "''"});
  expect_mentions(message("sample:2:10:-5"), {"SEED", "'-5'"});
  expect_mentions(message("sample:2:10"), {"sample:N:L:SEED"});
  expect_mentions(message("sample:2:10:1:4"), {"sample:N:L:SEED"});
}

// Mean log-probability of each sampled token (after BOS) under the model.
double mean_log_prob(const Model& model, const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<torch::Tensor> rows;
  for (const auto& s : sequences) rows.push_back(torch::tensor(s, torch::kInt64));
  const torch::Tensor tokens = torch::stack(rows);
  const torch::Tensor log_p = torch::log_softmax(Transformer(model).forward(tokens), -1);
  const int64_t len = tokens.size(1);
  const torch::Tensor next = tokens.slice(1, 1, len).unsqueeze(-1);
  return log_p.slice(1, 0, len - 1).gather(-1, next).mean().item<double>();
}

TEST(CalibrationSamplingStories, SamplesArePlausibleUnderTheModel) {
  if (!fs::exists(kStoriesModel)) {
    GTEST_SKIP() << kStoriesModel
                 << " is absent; this test needs the shared folder beside the checkout";
  }
  const Model model = load_llama2c(kStoriesModel);
  const CalibrationData data = load_calibration("sample:4:64:1", 0, model);
  ASSERT_EQ(data.sequences.size(), 4u);
  const double lp = mean_log_prob(model, data.sequences);
  const double uniform = -std::log(static_cast<double>(model.config.vocab_size));
  std::cout << "stories260K samples: mean log-prob " << lp << " (uniform " << uniform << ")\n";
  EXPECT_GT(lp, uniform + 1.0);
  // Sampling at temperature 1 is not greedy: it has to pick unlikely tokens too.
  EXPECT_LT(lp, -0.1);
}

}  // namespace
}  // namespace kvtune::worker
