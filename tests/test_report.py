"""The report: synthetic run directories (complete, partial, corrupt) -> HTML + Markdown."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from sparsetrain.errors import UserError
from sparsetrain.report import build_report, find_runs, load_run, results_table
from sparsetrain.report.plots import BUILDERS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYERS = {"conv1.weight": 0.5, "layer1.0.conv1.weight": 0.08, "fc.weight": 0.3}
ODD_NAME = 'only<config>&"co'


def _config(name: str, sparsity: dict | None = None) -> dict:
    cfg = {"name": name, "seed": 0, "data": {"dataset": "cifar10"}, "model": {"name": "resnet20"},
           "train": {"epochs": 3, "precision": "bf16"}}
    return {**cfg, "sparsity": sparsity} if sparsity else cfg


def _epochs(accs: list[float], **extra: object) -> list[dict]:
    return [{"epoch": i + 1, "step": 100 * (i + 1), "lr": 0.1, "train_loss": 2.0 - 0.5 * i,
             "train_acc": a - 0.05, "test_acc": a, "test_loss": 1.0, "time_s": 60.0 * (i + 1),
             **extra} for i, a in enumerate(accs)]


def _summary(name: str, method: str, acc: float, density: float, **extra: object) -> dict:
    return {"name": name, "model": "resnet20", "dataset": "cifar10", "method": method,
            "final": {"test_acc": acc, "test_loss": 0.5}, "epochs": 3, "steps": 300,
            "wall_s": 600.0, "density": {"global": density,
                                         "layers": {} if density == 1 else LAYERS},
            "flops": {"dense": 81_600_000, "sparse": round(81_600_000 * density)},
            "params": {"total": 272_474, "nonzero": round(272_474 * density)},
            "device": "cpu", "precision": "bf16", "seed": 0,
            "versions": {"torch": "2.13.0+cpu"}, "git_commit": "0123456789abcdef-dirty",
            **extra}


def _write_run(root: Path, name: str, config: object = None, metrics: list | None = None,
               summary: dict | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if config is not None:
        (d / "config.yaml").write_text(config if isinstance(config, str) else yaml.dump(config))
    if metrics is not None:
        (d / "metrics.jsonl").write_text(
            "".join(m if isinstance(m, str) else json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def _make_runs(root: Path) -> list[Path]:
    """Dense, static (with a partial eval), dynamic, evaluated + EagleEye, broken,
    config-only runs, and a directory that is not a run."""
    static_sp = {"method": "static", "density": 0.1, "budget": "erk"}
    dense = _write_run(root, "dense", _config("dense"), _epochs([0.5, 0.8, 0.855]),
                       _summary("dense", "dense", 0.855, 1.0))
    static = _write_run(root, "static", _config("static", static_sp),
                        _epochs([0.4, 0.7, 0.8097], density=0.1),
                        _summary("static", "static", 0.8097, 0.1, eval={"best.pt": {
                            "top1": 0.8, "robustness": {"fgsm": {"1/255": 0.6, "4/255": 0.3}}}}))
    ups = [{"event": "init", "step": 0, "density": 0.1, "dropped": 0, "grown": 0, "churn": 0.0,
            "itop": 0.1, "layers": LAYERS}]
    ups += [{"event": "update", "step": s, "density": 0.1, "dropped": 50, "grown": 50,
             "churn": 0.02 / (i + 1), "itop": 0.1 + 0.05 * (i + 1), "layers": LAYERS}
            for i, s in enumerate((100, 200, 300))]
    dyn_metrics = _epochs([0.45, 0.72, 0.82], density=0.1)
    dyn_metrics[0]["mask_updates"], dyn_metrics[2]["mask_updates"] = ups[:2], ups[2:]
    dynamic = _write_run(root, "rigl", _config("rigl", {**static_sp, "method": "rigl"}),
                         dyn_metrics, _summary("rigl", "rigl", 0.82, 0.1))
    rel = {"edges": [i / 4 for i in range(5)], "confidence": [None, 0.4, 0.62, 0.9],
           "accuracy": [None, 0.35, 0.6, 0.85], "count": [0, 10, 40, 50]}
    ev = {"top1": 0.79, "top5": 0.99, "nll": 0.6, "ece": 0.03125, "reliability": rel,
          "ood": {"noise": {"auroc": 0.9, "aupr": 0.8}, "blur": {"auroc": 0.8, "aupr": 0.7}},
          "robustness": {"clean": 0.79, "fgsm": {"2/255": 0.5, "8/255": 0.1234},
                         "pgd": {"8/255": 0.01}}}
    evald = _write_run(root, "evald", _config("evald", {**static_sp, "density": 0.02}),
                       _epochs([0.3, 0.6, 0.79], density=0.02),
                       _summary("evald", "static", 0.79, 0.02, eval={"last.pt": ev}))
    (evald / "candidates.jsonl").write_text("".join(
        json.dumps({"ratios": [0.5], "macs": 2e7 + 1e6 * i, "params": 1e5,
                    "abn_score": 0.3 + 0.01 * i, "vanilla_score": 0.1 + 0.02 * (i % 3),
                    "time_s": 1.0}) + "\n" for i in range(12)))
    (evald / "correlation.json").write_text(json.dumps({"pearson": 0.91, "spearman": 0.875,
                                                        "kendall": 0.7}))
    broken = _write_run(root, "broken", "name: [unclosed\n  : :", [
        json.dumps(_epochs([0.3])[0]) + "\n", "{not json\n", "[1, 2]\n",
        json.dumps(_epochs([0.3, 0.4])[1]) + "\n"])
    only = _write_run(root, ODD_NAME, _config("only", {**static_sp, "method": "set",
                                                      "density": 0.05}))
    notrun = root / "notes"
    notrun.mkdir()
    (notrun / "readme.txt").write_text("not a run")
    return [dense, static, dynamic, evald, broken, only, notrun]


class _Collector(HTMLParser):
    """Tags, image sources, rows of the results table and the text of the problems list."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.rows: list[list[str]] = []
        self.problems = ""
        self._table: str | None = None
        self._section: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "table":
            self._table = a.get("id")
        if tag == "h2":
            self._section = a.get("id")
        if tag == "tr" and self._table == "results":
            self.rows.append([])
        if tag == "td" and self._table == "results":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section == "problems":
            self.problems += data


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("runs")
    dirs = _make_runs(root)
    out = root.parent / f"{root.name}_out" / "report.html"
    return build_report(dirs, out), out


def test_results_table_rows_and_values(report) -> None:
    result, out = report
    page = _Collector()
    page.feed(out.read_text(encoding="utf-8"))
    rows = {r[0]: r for r in page.rows if r}
    assert list(rows) == ["dense", "static", "rigl", "evald", "broken", ODD_NAME]
    assert result.runs == list(rows)
    headers, _ = results_table([])
    col = {h: i for i, h in enumerate(headers)}
    dense, static, evald = rows["dense"], rows["static"], rows["evald"]
    assert dense[col["Top-1"]] == "85.50%" and dense[col["Density"]] == "1.000"
    assert dense[col["Method"]] == "dense" and dense[col["Epochs"]] == "3/3"
    assert dense[col["MACs"]] == "40.80M" and dense[col["Params"]] == "272.47K"
    assert dense[col["Wall time"]] == "10m 00s" and dense[col["ECE"]] == "—"
    assert static[col["Method"]] == "static ERK" and static[col["Top-1"]] == "80.97%"
    assert static[col["FGSM"]] == "30.00% [4/255]"  # no 8/255: the largest eps evaluated
    assert static[col["MACs (eff.)"]] == "4.08M" and static[col["Nonzero"]] == "27.25K"
    assert evald[col["ECE"]] == "0.0312" and evald[col["OOD AUROC"]] == "0.850"
    assert evald[col["FGSM"]] == "12.34%" and evald[col["Density"]] == "0.020"
    broken = rows["broken"]  # values from the two readable metric lines
    assert broken[col["Top-1"]] == "40.00%" and broken[col["Wall time"]] == "≥ 2m 00s"
    assert broken[col["Method"]] == "—" and broken[col["Epochs"]] == "2"
    only = rows[ODD_NAME]  # a run with only a config is still listed
    assert only[col["Method"]] == "SET" and only[col["Density"]] == "0.050"
    assert only[col["Top-1"]] == "—" and only[col["Wall time"]] == "—"


def test_html_is_self_contained_with_valid_pngs(report) -> None:
    result, out = report
    text = out.read_text(encoding="utf-8")
    page = _Collector()
    page.feed(text)
    expected = {"accuracy_vs_sparsity", "accuracy_at_90", "accuracy_vs_cost", "test_accuracy",
                "train_loss",
                "layers_static", "layers_rigl", "layers_evald", "mask_dynamics",
                "reliability_evald", "candidates_evald"}
    assert {p.stem for p in result.figures} == expected
    assert len(page.imgs) == len(expected)
    prefix = "data:image/png;base64,"
    for src in page.imgs:
        assert src.startswith(prefix)
        w, h = _png_size(base64.b64decode(src[len(prefix):], validate=True))
        assert w > 0 and h > 0
    assert not {"script", "link", "iframe", "object"} & set(page.tags)
    assert "config" not in page.tags  # the odd run name was escaped, not parsed as a tag
    assert "only&lt;config&gt;&amp;&quot;co" in text
    assert not re.search(r"https?:", text, re.IGNORECASE)
    assert out.stat().st_size < 1_000_000


def test_markdown_twin_links_existing_pngs(report) -> None:
    result, out = report
    md = result.markdown.read_text(encoding="utf-8")
    assert result.markdown == out.with_suffix(".md")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(result.figures)
    for link in links:
        assert link.startswith("report_files/")
        _png_size((out.parent / link).read_bytes())
    assert "| dense | dense | resnet20 | 3/3 | 1.000 | 85.50% |" in md
    assert "only&lt;config&gt;&amp;\"co" in md  # no raw HTML in the Markdown either


def test_problems_name_the_broken_files(report) -> None:
    result, out = report
    page = _Collector()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.problems.split())
    assert "broken config.yaml: not valid YAML" in text
    assert "broken metrics.jsonl: skipped 2 of 4 lines (line 2:" in text
    assert "broken summary.json: missing" in text
    assert "notes -: not a run directory" in text
    assert f"{ODD_NAME} metrics.jsonl: missing" in text
    warned = {w.split(": ")[0] + ": " + w.split(": ")[1] for w in result.warnings}
    assert {"broken: config.yaml", "broken: metrics.jsonl", "broken: summary.json"} <= warned
    assert not any(w.startswith(("dense:", "static:", "rigl:", "evald:"))
                   for w in result.warnings)


def test_run_values_fall_back_and_survive_odd_types(tmp_path: Path) -> None:
    _write_run(tmp_path, "old", _config("old"), _epochs([0.5]),
               {"final": {"test_acc": 0.7}, "params": 950, "wall_s": 3725})
    odd = _write_run(tmp_path, "odd", ["a list"], [{"test_acc": float("nan")}],
                     {"final": {"test_acc": "high"}, "params": "many", "density": [1, 2],
                      "eval": {"last.pt": {"ood": {"x": {"auroc": None}}, "robustness": 3}},
                      "flops": {"dense": True}})
    runs, problems = find_runs([tmp_path, tmp_path / "missing"])  # a parent stands for its runs
    assert [r.name for r in runs] == ["odd", "old"]
    assert [str(p) for p in problems] == [f"{tmp_path / 'missing'}: -: does not exist"]
    _, rows = results_table(runs)
    assert rows[1][1:6] == ["dense", "resnet20", "1/3", "1.000", "70.00%"]
    assert rows[1][-3:] == ["950", "—", "1h 02m"]  # older runs: params is an int
    assert rows[0][1:] == ["—"] * 13
    assert "expected a mapping, got list" in str(load_run(odd).problems[0])
    figures = {build.__name__: len(build(runs)) for build in BUILDERS}  # none trips over them
    assert figures == {"accuracy_vs_sparsity": 0, "accuracy_vs_cost": 0, "training_curves": 2,
                       "layer_densities": 0, "mask_dynamics": 0, "reliability": 0, "candidates": 0}


def test_bad_arguments_and_missing_matplotlib(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="at least one run"):
        build_report([], tmp_path / "r.html")
    with pytest.raises(UserError, match="HTML file"):
        build_report([tmp_path], tmp_path / "r.md")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(UserError, match=r"pip install -e '\.\[plots\]'"):
        build_report([tmp_path], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_import_does_not_need_matplotlib() -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; import sparsetrain, "
            "sparsetrain.report; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.stdout.strip() == "ok", res.stderr


def test_report_renders_in_chromium(report, tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("no chromium")
    _, out = report
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1200,2000", out.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 10_000
    w, h = _png_size(shot.read_bytes())
    assert w > 0 and h > 0


_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.title = `PROBE images=${imgs.length} broken=${broken} errors=${window.__errors.length}`;
});
</script>"""


def _probe(page: Path, tmp_path: Path) -> tuple[int, int, int]:
    """Chromium loads a copy of ``page`` with a probe script appended: (images, broken images,
    script or resource errors); skips without chromium."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("no chromium")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-background-networking", "--disable-component-update",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r"PROBE images=(\d+) broken=(\d+) errors=(\d+)", res.stdout)
    assert m is not None, res.stderr[-2000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_report_loads_without_errors_and_every_image_renders(report, tmp_path: Path) -> None:
    """The report itself has no scripts: no script or resource errors, every <img> decoded
    with a nonzero width."""
    _, out = report
    n_img = out.read_text().count("<img ")
    assert _probe(out, tmp_path) == (n_img, 0, 0)
    assert n_img >= 5


EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example-report.html"


def test_committed_example_report_has_the_comparison_figures() -> None:
    """docs/example-report.html (the CPU-protocol runs): the labelled chart at one sparsity,
    the lines over sparsities, accuracy vs cost; its Markdown twin links PNGs and SVGs that
    exist and decode; every run in it finished all its epochs."""
    html = EXAMPLE.read_text(encoding="utf-8")
    page = _Collector()
    page.feed(html)
    assert len(page.imgs) >= 8 and all(src.startswith("data:image/png;base64,")
                                       for src in page.imgs)
    md = EXAMPLE.with_suffix(".md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    stems = {Path(link).stem for link in links}
    assert {"accuracy_vs_sparsity", "accuracy_at_90", "accuracy_vs_cost"} <= stems
    for link in links:
        png = EXAMPLE.parent / link
        _png_size(png.read_bytes())
        assert png.with_suffix(".svg").read_bytes().lstrip().startswith(b"<?xml")
    rows = [r for r in page.rows if len(r) > 3]
    assert len(rows) >= 8 and all(r[3] == "15/15" for r in rows)


def test_committed_example_report_renders_in_chromium(tmp_path: Path) -> None:
    n_img = EXAMPLE.read_text(encoding="utf-8").count("<img ")
    assert _probe(EXAMPLE, tmp_path) == (n_img, 0, 0)


def test_two_seeds_of_one_recipe_are_one_mark(tmp_path: Path) -> None:
    """Same config but seed (and name): one group with both accuracies; another density or
    method is another group; the figure is the one-level dot chart, then the lines plus the
    dot chart of each level that holds two or more methods."""
    from sparsetrain.report.plots import accuracy_vs_sparsity, seed_groups

    sp = {"method": "granet", "density": 0.1}
    for seed, acc in ((0, 0.80), (1, 0.82)):
        cfg = {**_config(f"g{seed}", sp), "seed": seed}
        _write_run(tmp_path, f"g{seed}", cfg, _epochs([0.5, acc]),
                   _summary(f"g{seed}", "granet", acc, 0.1))
    _write_run(tmp_path, "gmp", _config("gmp", {"method": "gmp", "density": 0.1}),
               _epochs([0.79]), _summary("gmp", "gmp", 0.79, 0.1))
    _write_run(tmp_path, "dense", _config("dense"), _epochs([0.85]),
               _summary("dense", "dense", 0.85, 1.0))
    runs, _ = find_runs([tmp_path])
    groups = {g.label: g for g in seed_groups(runs)}
    assert set(groups) == {"GraNet", "GMP", "dense"}
    assert groups["GraNet"].accs == (0.80, 0.82) and groups["GraNet"].n == 2
    assert groups["GraNet"].mean == pytest.approx(0.81)
    (plot,) = accuracy_vs_sparsity(runs)
    assert plot.title == "Accuracy at 90% sparsity" and plot.png.startswith(PNG_SIGNATURE)
    _write_run(tmp_path, "gmp98", _config("gmp98", {"method": "gmp", "density": 0.02}),
               _epochs([0.6]), _summary("gmp98", "gmp", 0.6, 0.02))
    lines, at90 = accuracy_vs_sparsity(find_runs([tmp_path])[0])
    assert lines.title == "Accuracy vs sparsity" and lines.slug == "accuracy_vs_sparsity"
    # 90% holds two methods, so it also gets its labelled dot chart; 98% holds one (no chart)
    assert (at90.slug, at90.title) == ("accuracy_at_90", "Accuracy at 90% sparsity")


@pytest.mark.parametrize(("method", "sparsity", "label"), [
    ("static", {"budget": "erk"}, "static ERK"),
    ("static", {"budget": "uniform_plus"}, "static uniform+"),
    ("static", {"budget": "global", "score": "snip"}, "SNIP"),
    ("static", {"budget": "snip_ratio"}, "static SNIP-ratio"),
    ("gmp", {"budget": "erk"}, "GMP"),
    ("granet", {"budget": "erk"}, "GraNet"),
    ("granet", {"initial_density": 0.5}, "GraNet-ST"),
    ("rigl", {"budget": "erk"}, "RigL"),
    ("set", {"budget": "uniform"}, "SET (uniform)"),
    ("structured", {}, "EagleEye"),
])
def test_method_labels_are_proper_names(method: str, sparsity: dict, label: str) -> None:
    from sparsetrain.report.runs import display_name

    assert display_name(method, sparsity) == label


def test_pareto_front() -> None:
    from sparsetrain.report.plots import pareto_front

    pts = [(10.0, 80.0), (5.0, 70.0), (5.0, 75.0), (20.0, 79.0), (40.0, 85.0), (1.0, 60.0)]
    assert pareto_front(pts) == [(1.0, 60.0), (5.0, 75.0), (10.0, 80.0), (40.0, 85.0)]


def test_every_figure_is_also_an_svg(report) -> None:
    import xml.etree.ElementTree as ET

    result, _ = report
    assert result.figures
    for png in result.figures:
        svg = png.with_suffix(".svg")
        root = ET.fromstring(svg.read_bytes())
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert b"matplotlib.org" not in svg.read_bytes()  # no link out of the report


def test_filter_and_group_by(tmp_path: Path) -> None:
    from sparsetrain.report.html import select_runs
    from sparsetrain.report.plots import seed_groups

    sp = {"method": "granet", "density": 0.1}
    for name, seed, epochs, acc in (("a", 0, 3, 0.80), ("b", 1, 3, 0.82), ("c", 0, 6, 0.84)):
        cfg = {**_config(name, sp), "seed": seed}
        cfg["train"]["epochs"] = epochs
        _write_run(tmp_path, name, cfg, _epochs([acc]), _summary(name, "granet", acc, 0.1))
    _write_run(tmp_path, "g", _config("g", {"method": "gmp", "density": 0.1}), _epochs([0.7]),
               _summary("g", "gmp", 0.7, 0.1))
    runs, _ = find_runs([tmp_path])
    assert sorted(g.n for g in seed_groups(select_runs(runs))) == [1, 1, 2]  # seeds only
    merged = seed_groups(select_runs(runs, group_by=["method", "density"]))
    assert sorted((g.label, g.n) for g in merged) == [("GMP", 1), ("GraNet", 3)]
    assert [r.name for r in select_runs(runs, ["method=Gra*", "train.epochs=3"])] == ["a", "b"]
    assert select_runs(runs, ["density=0.100", "name=g"])[0].name == "g"
    with pytest.raises(UserError, match="key=pattern"):
        select_runs(runs, ["method"])
    with pytest.raises(UserError, match="no run matches"):
        build_report([tmp_path], tmp_path.parent / "r.html", filters=["model=vgg*"])


def test_training_curves_of_seeds_are_one_line_with_a_band(tmp_path: Path) -> None:
    from sparsetrain.report.plots import _curve_groups

    sp = {"method": "rigl", "density": 0.1}
    for seed, accs in ((0, [0.5, 0.7]), (1, [0.6, 0.8])):
        _write_run(tmp_path, f"s{seed}", {**_config(f"s{seed}", sp), "seed": seed},
                   _epochs(accs), _summary(f"s{seed}", "rigl", accs[-1], 0.1))
    _write_run(tmp_path, "solo", _config("solo", {"method": "set", "density": 0.1}),
               _epochs([0.4]))
    groups = dict(_curve_groups(find_runs([tmp_path])[0], "test_acc"))
    assert groups["RigL (n=2)"] == [(1, pytest.approx(0.55), 0.5, 0.6),
                                    (2, pytest.approx(0.75), 0.7, 0.8)]
    assert groups["solo"] == [(1, 0.4, 0.4, 0.4)]


def test_training_flops_integrate_the_masks_over_steps(tmp_path: Path) -> None:
    """3 × forward FLOPs per image × images, with each layer scaled by its density between
    mask updates (ResNet-20: 81,626,368 forward FLOPs per image, conv1 884,736)."""
    from sparsetrain.report.plots import training_flops

    total, conv1 = 81_626_368, 884_736
    dense_cfg = _config("d")
    dense_cfg["data"]["batch_size"] = 64
    _write_run(tmp_path, "d", dense_cfg, _epochs([0.8]), _summary("d", "dense", 0.8, 1.0))
    cfg = _config("g", {"method": "gmp", "density": 0.25})
    cfg["data"]["batch_size"] = 64
    ups = [{"event": "init", "step": 0, "layers": {"conv1.weight": 0.5}},
           {"event": "update", "step": 100, "layers": {"conv1.weight": 0.25}}]
    _write_run(tmp_path, "g", cfg, _epochs([0.8], mask_updates=ups),
               _summary("g", "gmp", 0.8, 0.25))
    runs = {r.name: r for r in find_runs([tmp_path])[0]}
    # no mask updates logged: the summary's effective FLOPs (81.6 M in these summaries)
    assert training_flops(runs["d"]) == 3 * 64 * 300 * 81_600_000
    expected = 3 * 64 * (100 * (total - 0.5 * conv1) + 200 * (total - 0.75 * conv1))
    assert training_flops(runs["g"]) == pytest.approx(expected)


@pytest.mark.parametrize("xs, log", [
    ([26.9, 27.4, 28.8], False),  # runs of nearly the same length: a log axis shows no number
    ([3.9, 14.2, 75.0], True),    # FLOPs over about a decade: log, labelled at 1-2-5
    ([0.021, 0.035, 0.27], True),
    ([0.5, 40.0, 4000.0], True),   # several decades: log, labelled at the powers of ten
])
def test_cost_axis_always_shows_numbers_within_the_data(xs: list[float], log: bool) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsetrain.report.plots import cost_axis

    fig, ax = plt.subplots()
    try:
        ax.plot(xs, [80.0] * len(xs), "o")
        cost_axis(ax, xs)
        fig.canvas.draw()
        assert ax.get_xscale() == ("log" if log else "linear")
        lo, hi = ax.get_xlim()
        shown = [t.get_text() for t in ax.get_xticklabels()
                 if lo <= t.get_position()[0] <= hi and t.get_text()]
        assert len(shown) >= 2, shown
        assert all(float(v) > 0 for v in shown)
    finally:
        plt.close(fig)


def test_svg_figures_are_the_same_on_every_rebuild(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    dirs = _make_runs(tmp_path / "runs")
    svgs = []
    for name in ("a", "b"):
        build_report(dirs, tmp_path / name / "report.html")
        svgs.append({p.name: p.read_bytes()
                     for p in sorted((tmp_path / name / "report_files").glob("*.svg"))})
    assert len(svgs[0]) >= 3 and svgs[0] == svgs[1]
