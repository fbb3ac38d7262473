// The report folder (coordinator/report.h) on a hand-made search job: three
// frontier configs, two uniform baselines, a profile of two layers x three
// pairs with one pruned pair and a two-layer group. Every picture and the
// page are parsed as XML (libxml2), and the markers counted in the tree.
#include <gtest/gtest.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <utility>

#include "../support/csv.h"
#include "../support/temp_dir.h"
#include "kvtune/common/error.h"
#include "report.h"

namespace kvtune::report {
namespace {

using kvtune::testing::parse_csv;
using kvtune::testing::TempDir;

// One result entry as the API writes it.
json entry(const std::string& layers, double bits, double kl) {
  return {{"config", layers},
          {"layers", layers},
          {"eval_key", "k-" + layers},
          {"metrics",
           {{"avg_bits", bits},
            {"kl", kl},
            {"kl_all", kl},
            {"delta_nll", kl / 2},
            {"top1_agreement", 1 - kl / 10},
            {"bytes_per_token", bits * 16},
            {"tokens", 64},
            {"attn_rel_err", {0.1, 0.2}}}}};
}

// A finished search on a two-layer model. The model name and one baseline
// carry characters XML and CSV must escape or quote.
json sample_job() {
  json frontier = json::array(
      {entry("KV2,KV4", 3, 0.5), entry("KV4,KV4", 4, 0.125), entry("KV8,KV4", 6, 0.03125)});
  frontier[1]["predicted_kl"] = 0.1;
  frontier[2]["validation"] = {{"kl", 0.04},
                               {"rank_flip", true},
                               {"free_run", {{"agreement", 0.75}, {"first_divergence", 12.5}}}};
  const json baselines =
      json::array({entry("KV4,KV4", 4, 0.125), entry("KVvllm:fp8,KVvllm:fp8", 8, 0.002)});
  json results = json::array();
  const std::vector<std::pair<std::string, double>> pairs = {
      {"KV8", 0.001}, {"KV4", 0.02}, {"KV2", 0.3}};
  for (int layer = 0; layer < 2; ++layer) {
    for (const auto& [pair, kl] : pairs) {
      const std::string layers = layer == 0 ? pair + ",KV16" : "KV16," + pair;
      results.push_back(entry(layers, 0, kl * (layer == 0 ? 10 : 1)));
    }
  }
  for (const json& f : frontier) results.push_back(f);
  return {{"id", "job-1"},
          {"kind", "search"},
          {"state", "done"},
          {"model", "demo <&> \"model\""},
          {"model_info", {{"layers", 2}, {"synthetic", true}}},
          {"spec",
           {{"target", "kvtune"},
            {"data", "sample:2:32:0"},
            {"candidates", {"KV8", "KV4", "KV2"}},
            {"search", {{"max_bits", 5.0}, {"candidates", {"KV8", "KV4", "KV2"}}}}}},
          {"frontier", frontier},
          {"baselines", baselines},
          {"results", results},
          {"search",
           {{"strategy", "kvtune"},
            {"evaluations", 9},
            // KV2 is pruned for the group of both layers.
            {"grouping", {{{"layers", {0, 1}}, {"pairs", {"KV8", "KV4"}}}}},
            {"additive_frontier",
             {{{"layers", "KV2,KV2"}, {"avg_bits", 2.0}, {"predicted_kl", 0.9}},
              {{"layers", "KV2,KV4"}, {"avg_bits", 3.0}, {"predicted_kl", 0.4}},
              {{"layers", "KV4,KV4"}, {"avg_bits", 4.0}, {"predicted_kl", 0.1}},
              {{"layers", "KV8,KV4"}, {"avg_bits", 6.0}, {"predicted_kl", 0.0}}}}}}};
}

// A parsed XML document, or the parser's message.
struct Xml {
  explicit Xml(const std::string& text) {
    doc = xmlReadMemory(text.data(), static_cast<int>(text.size()), "report.xml", nullptr,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (doc == nullptr) {
      const xmlError* e = xmlGetLastError();
      error = e != nullptr && e->message != nullptr ? e->message : "not well-formed";
    }
  }
  ~Xml() {
    if (doc != nullptr) xmlFreeDoc(doc);
  }
  Xml(const Xml&) = delete;
  Xml& operator=(const Xml&) = delete;

  // Elements named `name` whose class attribute is `cls` ("" for any).
  int count(const char* name, const std::string& cls) const {
    return doc == nullptr ? -1 : count_in(xmlDocGetRootElement(doc), name, cls);
  }
  // The attributes of each element named `name` with class `cls`, in document
  // order, and its text as "#text".
  std::vector<std::map<std::string, std::string>> elements(const char* name,
                                                           const std::string& cls) const {
    std::vector<std::map<std::string, std::string>> out;
    if (doc != nullptr) collect_elements(xmlDocGetRootElement(doc), name, cls, out);
    return out;
  }
  // Every text node's content, concatenated with newlines.
  std::string texts() const {
    std::string out;
    collect(xmlDocGetRootElement(doc), out);
    return out;
  }

  xmlDocPtr doc = nullptr;
  std::string error;

 private:
  static void collect_elements(xmlNodePtr node, const char* name, const std::string& cls,
                               std::vector<std::map<std::string, std::string>>& out) {
    for (xmlNodePtr c = node; c != nullptr; c = c->next) {
      if (c->type != XML_ELEMENT_NODE) continue;
      if (xmlStrcmp(c->name, BAD_CAST name) == 0) {
        std::map<std::string, std::string> attrs;
        for (xmlAttrPtr a = c->properties; a != nullptr; a = a->next) {
          xmlChar* value = xmlGetProp(c, a->name);
          attrs[reinterpret_cast<const char*>(a->name)] = reinterpret_cast<const char*>(value);
          xmlFree(value);
        }
        xmlChar* content = xmlNodeGetContent(c);
        attrs["#text"] = content != nullptr ? reinterpret_cast<const char*>(content) : "";
        xmlFree(content);
        if (attrs["class"] == cls) out.push_back(attrs);
      }
      collect_elements(c->children, name, cls, out);
    }
  }
  static int count_in(xmlNodePtr node, const char* name, const std::string& cls) {
    int n = 0;
    for (xmlNodePtr c = node; c != nullptr; c = c->next) {
      if (c->type != XML_ELEMENT_NODE) continue;
      if (xmlStrcmp(c->name, BAD_CAST name) == 0) {
        xmlChar* value = xmlGetProp(c, BAD_CAST "class");
        if (cls.empty() || (value != nullptr && cls == reinterpret_cast<const char*>(value))) ++n;
        xmlFree(value);
      }
      n += count_in(c->children, name, cls);
    }
    return n;
  }
  static void collect(xmlNodePtr node, std::string& out) {
    for (xmlNodePtr c = node; c != nullptr; c = c->next) {
      if (c->type == XML_TEXT_NODE && c->content != nullptr) {
        out += reinterpret_cast<const char*>(c->content) + std::string("\n");
      }
      collect(c->children, out);
    }
  }
};

TEST(Report, PicturesAndPageAreWellFormedXml) {
  const json job = sample_job();
  for (const std::string& text :
       {pareto_svg(job), sensitivity_svg(job), index_html(job, recommended_exports(job))}) {
    const Xml xml(text);
    EXPECT_NE(xml.doc, nullptr) << xml.error << "\n" << text;
  }
}

TEST(Report, ParetoHasOneMarkerPerFrontierAndPredictedConfigAndTheBudget) {
  json job = sample_job();
  const Xml xml(pareto_svg(job));
  ASSERT_NE(xml.doc, nullptr) << xml.error;
  EXPECT_EQ(xml.count("circle", "frontier"), 3);
  EXPECT_EQ(xml.count("circle", "predicted"), 4);  // hollow: drawn as circles too
  EXPECT_EQ(xml.count("rect", "baseline"), 2);
  EXPECT_EQ(xml.count("path", "frontier-step"), 1);
  EXPECT_EQ(xml.count("g", "budget"), 1);
  const std::string texts = xml.texts();
  for (const char* label : {"budget", "KV4\n", "KVvllm:fp8\n", "1e-2\n", "0.1\n", "1e-6\n"}) {
    EXPECT_NE(texts.find(label), std::string::npos) << label << " in\n" << texts;
  }
  // The additive model predicts KL 0 for one config: floored, and said.
  EXPECT_NE(texts.find("is drawn at 1e-6"), std::string::npos) << texts;

  job["spec"]["search"]["max_bits"] = 16.0;  // no budget: no line
  EXPECT_EQ(Xml(pareto_svg(job)).count("g", "budget"), 0);
}

TEST(Report, ParetoPlacesTheLabelsOfALlamaCppScan) {
  // The 65 uniform configs of a llama.cpp scan of stories260K (key/value
  // type:bits:KL): labels stacked where a label's move rounded below 12 px
  // once kept the placement from ending.
  std::istringstream scan(
      "/bf16:16:0.000611 /f16:16:1.085e-05 /f32:32:-8.174e-10 /iq4_nl:4.5:0.7337 "
      "/q4_0:4.5:0.9251 /q4_1:5:0.6787 /q5_0:5.5:0.259 /q5_1:6:0.2255 /q8_0:8.5:0.004736 "
      "bf16/f16:16:0.0004787 bf16/iq4_nl:10.25:0.2527 bf16/q4_0:10.25:0.3023 "
      "bf16/q4_1:10.5:0.2146 bf16/q5_0:10.75:0.07145 bf16/q5_1:11:0.0567 "
      "bf16/q8_0:12.25:0.001677 f16/bf16:16:0.0001126 f16/iq4_nl:10.25:0.2536 "
      "f16/q4_0:10.25:0.3003 f16/q4_1:10.5:0.2155 f16/q5_0:10.75:0.071 f16/q5_1:11:0.05799 "
      "f16/q8_0:12.25:0.001241 iq4_nl/bf16:10.25:0.5755 iq4_nl/f16:10.25:0.5807 "
      "iq4_nl/q4_0:4.5:0.8056 iq4_nl/q4_1:4.75:0.7447 iq4_nl/q5_0:5:0.6223 "
      "iq4_nl/q5_1:5.25:0.6386 iq4_nl/q8_0:6.5:0.5687 q4_0/bf16:10.25:0.7052 "
      "q4_0/f16:10.25:0.7063 q4_0/iq4_nl:4.5:0.8367 q4_0/q4_1:4.75:0.8295 "
      "q4_0/q5_0:5:0.7112 q4_0/q5_1:5.25:0.7395 q4_0/q8_0:6.5:0.7106 q4_1/bf16:10.5:0.534 "
      "q4_1/f16:10.5:0.5366 q4_1/iq4_nl:4.75:0.7121 q4_1/q4_0:4.75:0.7627 "
      "q4_1/q5_0:5.25:0.5901 q4_1/q5_1:5.5:0.5837 q4_1/q8_0:6.75:0.5408 "
      "q5_0/bf16:10.75:0.1924 q5_0/f16:10.75:0.1929 q5_0/iq4_nl:5:0.3844 "
      "q5_0/q4_0:5:0.4422 q5_0/q4_1:5.25:0.3731 q5_0/q5_1:5.75:0.2347 q5_0/q8_0:7:0.1941 "
      "q5_1/bf16:11:0.1848 q5_1/f16:11:0.1835 q5_1/iq4_nl:5.25:0.3984 "
      "q5_1/q4_0:5.25:0.4394 q5_1/q4_1:5.5:0.3733 q5_1/q5_0:5.75:0.2476 "
      "q5_1/q8_0:7.25:0.1865 q8_0/bf16:12.25:0.003549 q8_0/f16:12.25:0.003499 "
      "q8_0/iq4_nl:6.5:0.2609 q8_0/q4_0:6.5:0.2988 q8_0/q4_1:6.75:0.2093 "
      "q8_0/q5_0:7:0.07296 q8_0/q5_1:7.25:0.06159 ");
  json job = sample_job();
  job["baselines"] = json::array();
  for (std::string item; scan >> item;) {
    const auto slash = item.find('/'), colon = item.find(':'), last = item.rfind(':');
    const std::string k = item.substr(0, slash), v = item.substr(slash + 1, colon - slash - 1);
    const std::string pair = k.empty() ? "KVllama.cpp:" + v : "Kllama.cpp:" + k + "Vllama.cpp:" + v;
    job["baselines"].push_back(entry(pair + "," + pair,
                                     std::stod(item.substr(colon + 1, last - colon - 1)),
                                     std::stod(item.substr(last + 1))));
  }
  ASSERT_EQ(job["baselines"].size(), 65u);
  const Xml xml(pareto_svg(job));
  ASSERT_NE(xml.doc, nullptr) << xml.error;
  EXPECT_EQ(xml.count("rect", "baseline"), 65);
}

TEST(Report, ParetoKeepsBaselineNamesOffTheMarkers) {
  // KV2 is a baseline and the frontier's first point; just right of it, where
  // its name would go, lie the frontier's next points (first job) or the
  // additive model's predictions (second).
  json crowded = sample_job();
  crowded["frontier"] = json::array({entry("KV2,KV2", 2, 0.5), entry("K4V2,KV2", 2.1, 0.49),
                                     entry("KV4,KV2", 2.2, 0.48), entry("KV8,KV8", 8, 0.001)});
  crowded["baselines"] = json::array({entry("KV2,KV2", 2, 0.5), entry("KV8,KV8", 8, 0.001)});
  crowded["search"]["additive_frontier"] = json::array();
  json predicted = crowded;
  predicted["frontier"] = json::array({entry("KV2,KV2", 2, 0.5), entry("KV8,KV8", 8, 0.001)});
  predicted["search"]["additive_frontier"] =
      json::array({{{"layers", "KV2,K4V2"}, {"avg_bits", 2.1}, {"predicted_kl", 0.5}},
                   {{"layers", "KV2,KV4"}, {"avg_bits", 2.2}, {"predicted_kl", 0.48}}});
  for (const json& job : {crowded, predicted}) {
    const Xml xml(pareto_svg(job));
    ASSERT_NE(xml.doc, nullptr) << xml.error;
    const auto labels = xml.elements("text", "baseline-label");
    ASSERT_EQ(labels.size(), 2u);
    auto markers = xml.elements("circle", "frontier");
    for (const auto& m : xml.elements("circle", "predicted")) markers.push_back(m);
    ASSERT_EQ(markers.size(), 4u);
    for (const auto& l : labels) {
      // 11 px text: about 6.6 px a character, from 11 px above the baseline to 2 below
      const double width = 6.6 * static_cast<double>(l.at("#text").size()),
                   x = std::stod(l.at("x")), y = std::stod(l.at("y"));
      const double left = l.contains("text-anchor") ? x - width : x;
      for (const auto& m : markers) {
        const double cx = std::stod(m.at("cx")), cy = std::stod(m.at("cy")),
                     r = std::stod(m.at("r"));
        const bool overlaps =
            left < cx + r && cx - r < left + width && y - 11 < cy + r && cy - r < y + 2;
        EXPECT_FALSE(overlaps) << l.at("#text") << " at " << x << "," << y << " over the "
                               << m.at("class") << " marker at " << cx << "," << cy;
      }
    }
  }
}

TEST(Report, ParetoDrawsAOnePointFrontier) {
  json job = sample_job();
  job["frontier"] = json::array({entry("KV8,KV8", 8, 0.0)});
  job["baselines"] = json::array();
  job["search"]["additive_frontier"] = json::array();
  const Xml xml(pareto_svg(job));
  ASSERT_NE(xml.doc, nullptr) << xml.error;
  EXPECT_EQ(xml.count("circle", "frontier"), 1);
  EXPECT_EQ(xml.count("path", "frontier-step"), 0);
  EXPECT_NE(xml.texts().find("is drawn at 1e-6"), std::string::npos);
}

TEST(Report, CsvHasOneRowPerConfigWithTheJsonsMetrics) {
  const json job = sample_job();
  const auto rows = parse_csv(frontier_csv(job));
  ASSERT_EQ(rows.size(), 1u + 3 + 2);
  const auto& header = rows[0];
  const auto column = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    EXPECT_NE(it, header.end()) << name;
    return static_cast<std::size_t>(it - header.begin());
  };
  const std::size_t kind = column("kind"), layers = column("layers"), kl = column("kl"),
                    val_kl = column("validation_kl"),
                    agree = column("validation_free_run_agreement");
  EXPECT_EQ(kind, 0u);
  for (std::size_t r = 1; r < rows.size(); ++r) {
    ASSERT_EQ(rows[r].size(), header.size()) << r;
    const bool frontier = r <= 3;
    const json& e = job[frontier ? "frontier" : "baselines"][frontier ? r - 1 : r - 4];
    EXPECT_EQ(rows[r][kind], frontier ? "frontier" : "baseline");
    EXPECT_EQ(rows[r][layers], e["layers"]);  // quoted: it holds commas
    EXPECT_EQ(std::stod(rows[r][kl]), e["metrics"]["kl"].get<double>());
  }
  EXPECT_EQ(std::stod(rows[3][val_kl]), 0.04);
  EXPECT_EQ(rows[3][agree], "0.75");
  EXPECT_EQ(rows[1][val_kl], "");
}

TEST(Report, SensitivityMarksPrunedPairsAndTheCluster) {
  const Xml xml(sensitivity_svg(sample_job()));
  ASSERT_NE(xml.doc, nullptr) << xml.error;
  EXPECT_EQ(xml.count("rect", "cell"), 6);  // 2 layers x 3 pairs
  EXPECT_EQ(xml.count("g", "pruned"), 2);   // KV2, pruned for the group of both layers
  EXPECT_EQ(xml.count("g", "cluster"), 1);  // layers 0 and 1 share one pair
  EXPECT_EQ(xml.count("g", "colour-scale"), 1);
  const std::string texts = xml.texts();
  for (const char* label : {"group 1", "layer 0", "layer 1", "KV8", "KV2", "crossed out: pruned"}) {
    EXPECT_NE(texts.find(label), std::string::npos) << label << " in\n" << texts;
  }
}

TEST(Report, SensitivityWithoutAProfileSaysSo) {
  json job = sample_job();
  job["results"] = job["frontier"];  // a scan: whole configurations only
  job["search"]["strategy"] = "scan";
  const std::string svg = sensitivity_svg(job);
  const Xml xml(svg);
  ASSERT_NE(xml.doc, nullptr) << xml.error;
  EXPECT_NE(xml.texts().find("No per-layer profile"), std::string::npos) << svg;
  EXPECT_NE(xml.texts().find("scan strategy"), std::string::npos) << svg;
}

TEST(Report, TextIsEscaped) {
  const json job = sample_job();
  const std::string svg = pareto_svg(job);
  EXPECT_NE(svg.find("demo &lt;&amp;&gt; &quot;model&quot;"), std::string::npos);
  EXPECT_EQ(svg.find("demo <&>"), std::string::npos);
  const std::string html = index_html(job, recommended_exports(job));
  EXPECT_EQ(html.find("demo <&>"), std::string::npos);
  // The parsed page reads back the name as it was.
  EXPECT_NE(Xml(html).texts().find("demo <&> \"model\""), std::string::npos);
  EXPECT_EQ(xml_escape("a<b>&'\"c"), "a&lt;b&gt;&amp;&#39;&quot;c");
  EXPECT_EQ(csv_field("KV4,KV8"), "\"KV4,KV8\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("KVvllm:fp8"), "KVvllm:fp8");
}

TEST(Report, SmallPieces) {
  EXPECT_EQ(number_text(0.1), "0.1");
  EXPECT_EQ(std::stod(number_text(0.1 + 0.2)), 0.1 + 0.2);
  EXPECT_EQ(decade_label(-3), "1e-3");
  EXPECT_EQ(decade_label(0), "1");
  EXPECT_EQ(kl_label(0.0031), "3.1e-3");
  EXPECT_EQ(kl_label(0.42), "0.42");
  EXPECT_EQ(kl_label(0.0), "0");
  EXPECT_EQ(short_config_name("KV4,KV4,KV4"), "KV4");
  EXPECT_EQ(short_config_name("KV4,KV2"), "KV4,KV2");
  EXPECT_EQ(short_config_name("KV4,KV44"), "KV4,KV44");
  EXPECT_EQ(short_config_name("KV8,KV8,K8V4,KV4,KV4,KV4"), "KV8*2,K8V4,KV4*3");
  EXPECT_EQ(short_config_name("KVllama.cpp:q8_0,KVllama.cpp:q8_0"), "KVq8_0");
  EXPECT_EQ(short_config_name("Kllama.cpp:q8_0Vllama.cpp:q4_0,KVllama.cpp:q4_0,KVllama.cpp:q4_0"),
            "Kq8_0Vq4_0,KVq4_0*2");
  // A config that mixes in other formats keeps every name whole.
  EXPECT_EQ(short_config_name("KV16,KVllama.cpp:q8_0"), "KV16,KVllama.cpp:q8_0");
}

TEST(Report, RecommendsTheLowestKlAndExportsItInEachFormatThatAcceptsIt) {
  json job = sample_job();
  ASSERT_NE(recommended(job), nullptr);
  EXPECT_EQ((*recommended(job))["layers"], "KV8,KV4");
  const auto exports = recommended_exports(job);
  std::set<std::string> formats;
  for (const ExportFile& e : exports) formats.insert(e.format);
  // Integer widths: KVTuner's YAML only (the engines' formats refuse them).
  EXPECT_EQ(formats, (std::set<std::string>{"kvtuner"}));
  EXPECT_EQ(exports[0].file, "kvtuner.yaml");
  EXPECT_NE(exports[0].text.find("nbits_key: 8"), std::string::npos) << exports[0].text;

  // An engine target: its own deploy command, named by its format.
  job["frontier"][2]["deploy"] = {
      {"format", "vllm"}, {"released", true}, {"text", "vllm serve M --kv-cache-dtype fp8\n"}};
  const auto deploy = recommended_exports(job);
  ASSERT_EQ(deploy.size(), 1u);
  EXPECT_EQ(deploy[0].file, "deploy-vllm.sh");
  EXPECT_TRUE(deploy[0].deploy);
  EXPECT_NE(index_html(job, deploy).find("vllm serve M --kv-cache-dtype fp8"), std::string::npos);
}

TEST(Report, WritesTheFolderWhosePageReferencesOnlyItsFiles) {
  const TempDir dir("kvtune-report-test");
  const std::filesystem::path out = dir.path() / "nested" / "job-1";
  write_report(sample_job(), out);
  for (const char* name : {"frontier.json", "frontier.csv", "pareto.svg", "sensitivity.svg",
                           "index.html", "kvtuner.yaml"}) {
    EXPECT_TRUE(std::filesystem::exists(out / name)) << name;
  }
  std::ifstream in(out / "frontier.json");
  const json written = json::parse(in);
  EXPECT_EQ(written["frontier"], sample_job()["frontier"]);
  EXPECT_EQ(written["baselines"], sample_job()["baselines"]);
  EXPECT_EQ(written["recommended"], "KV8,KV4");
  EXPECT_EQ(written["exports"][0]["file"], "kvtuner.yaml");

  std::ifstream page(out / "index.html");
  const std::string html((std::istreambuf_iterator<char>(page)), {});
  const std::regex reference(R"re((src|href)="([^"]*)")re");
  int references = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), reference);
       it != std::sregex_iterator(); ++it, ++references) {
    const std::string target = (*it)[2];
    EXPECT_EQ(target.find_first_of("/:\\"), std::string::npos) << target;
    EXPECT_TRUE(std::filesystem::exists(out / target)) << target;
  }
  EXPECT_GE(references, 5);
}

TEST(Report, RefusesWhatItCannotReport) {
  const TempDir dir("kvtune-report-test");
  json job = sample_job();
  // A folder that cannot be made: a file stands where it would go.
  std::ofstream(dir.file("file")) << "x";
  const std::string blocked = dir.file("file") + "/report";
  try {
    write_report(job, blocked);
    FAIL() << "wrote under a file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(blocked), std::string::npos) << e.what();
  }
  job["state"] = "running";
  try {
    write_report(job, dir.file("running"));
    FAIL() << "reported a running job";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("job-1 is running"), std::string::npos) << e.what();
  }
  job["state"] = "done";
  job["kind"] = "evaluate";
  job.erase("frontier");
  EXPECT_THROW(write_report(job, dir.file("evaluate")), Error);
  EXPECT_EQ(default_dir("abc"), std::filesystem::path("kvtune-report/abc"));
}

}  // namespace
}  // namespace kvtune::report
