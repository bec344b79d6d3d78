import base64
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from conftest import run_surfsep
from surfsep.data.audio_sets import AudioReferenceSet
from surfsep.data.images import ReferenceSet
from surfsep.report import CLIP_SECONDS, ReportError, write_report
from surfsep.report_media import PEAK_LEVEL

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from browser import check_page, find_chromium  # noqa: E402

CHROMIUM = find_chromium()
# CI installs Chromium and sets this, so that a missing browser fails there instead of skipping.
BROWSER_REQUIRED = os.environ.get("SURFSEP_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def image_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_surfsep("demo", "--out", str(out), "--scale", "0.003", "--data-scale", "0.05")
    return out


@pytest.fixture(scope="module")
def audio_bench(tones_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    (folder / "tiny.yaml").write_text("channels: [8, 8, 16]\nbatch_size: 4\nsegment_seconds: 0.25\nlog_every: 1\n")
    run_surfsep("bench", "--data", str(tones_dir), "--out", str(folder / "b"), "--samples", "16", "--points", "1",
                "--sweep", "1,2", "--methods", "mixit,supervised-flow,surf", "--config", str(folder / "tiny.yaml"))
    return folder / "b"


def media_sources(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def example_scores(page: str, label: str) -> list[float]:
    """The per-example scores the page prints for one model, in example order."""
    return [float(value) for value in re.findall(rf"<th>{re.escape(label)}<div class=\"score\">SI-SDRi (-?[\d.]+) dB", page)]


def test_demo_report_shows_every_method(image_demo, tmp_path):
    out = write_report(image_demo, out=tmp_path / "demo.html")
    page = out.read_text()
    test = ReferenceSet.open(image_demo / "data" / "test", 2)
    shown = min(8, len(test))

    # Mixture (1 tile), references (2) and three models (2 each) for every example mixture.
    assert page.count('class="tile"') == shown * (1 + 2 + 3 * 2)
    for name in ("mixit", "surf", "supervised-flow", "surf-teacher", "mixture"):
        assert f"<td>{name}</td>" in page
    # Self-contained: every picture is embedded, nothing is fetched.
    assert media_sources(page) and all(source.startswith("data:") for source in media_sources(page))

    # MixIT separates in one deterministic step, so the page shows the PSNR the demo scored per file.
    with (image_demo / "mixit" / "eval" / "per_file.csv").open() as handle:
        scored = {row["file"]: float(row["psnr"]) for row in csv.DictReader(handle)}
    rows = re.findall(r'<th class="name">([^<]+)</th>(.*?)</tr>', page)
    assert [name for name, _ in rows] == test.names[:shown]
    for name, cells in rows:
        mixit_cell = re.findall(r'PSNR (-?[\d.]+) dB', cells)[0]
        assert float(mixit_cell) == pytest.approx(scored[name], abs=0.051)


def test_bench_report_plays_each_method(audio_bench, tones_dir):
    out = write_report(audio_bench, examples=2)
    assert out == audio_bench / "report.html"
    page = out.read_text()
    assert page.count("<audio ") == 2 * (1 + 2 + 3 * 2)
    assert page.count('alt="spectrogram"') == 2 * (1 + 2 + 3 * 2)
    assert all(source.startswith("data:") for source in media_sources(page))
    assert "SI-SDRi dB" in page
    assert "bench.json" in page

    # MixIT is one-step: each example's SI-SDRi is the one the benchmark scored for that test file.
    record = json.loads(next((audio_bench / "results" / "mixit" / "seed0").glob("step*.json")).read_text())
    assert example_scores(page, "mixit") == pytest.approx(record["per_file"][:2], abs=0.051)
    names = AudioReferenceSet.open(tones_dir / "test", 2).names[:2]
    assert re.findall(r"<h3>([^<]+)</h3>", page) == names

    # One gain scales every clip of an example: the loudest reaches the peak level and the mixture
    # clip stays the sum of the reference clips (the tone mixtures are sums).
    first = page.split('<section class="example">')[1].split("</section>")[0]
    clips = [soundfile.read(io.BytesIO(base64.b64decode(payload)))[0]
             for payload in re.findall(r'src="data:audio/flac;base64,([^"]+)"', first)]
    assert max(np.abs(clip).max() for clip in clips) == pytest.approx(PEAK_LEVEL, abs=1e-4)
    np.testing.assert_allclose(clips[0], clips[1] + clips[2], atol=2e-4)


def test_run_report_takes_examples_from_data(digits_dir, tmp_path):
    run = tmp_path / "run"
    run_surfsep("train", "--method", "supervised-flow", "--data", str(digits_dir / "train"), "--out", str(run),
                "--steps", "4", "--batch-size", "8", "--channels", "8", "16", "--log-every", "1",
                "--valid", str(digits_dir / "valid"), "--valid-every", "2", "--valid-limit", "4")
    page = write_report(run, steps=2, examples=3).read_text()
    assert page.count('class="tile"') == 3 * (1 + 2 + 2)
    assert "last validation (student psnr), step 4" in page
    assert "student 2" in page  # sampler steps named in the examples' note

    other = run_surfsep("report", str(run), "--data", str(digits_dir / "test"), "--examples", "2",
                        "--out", str(tmp_path / "other.html"))
    assert other.stdout.strip() == str(tmp_path / "other.html")
    page = (tmp_path / "other.html").read_text()
    assert f"The first mixtures (up to 2) of {digits_dir / 'test'}" in page
    assert page.count('class="tile"') == 2 * (1 + 2 + 2)


def test_run_without_split_reports_how_to_add_examples(digits_dir, tmp_path):
    run = tmp_path / "run"
    run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(run),
                "--steps", "2", "--batch-size", "8", "--channels", "8", "16")
    page = write_report(run).read_text()
    assert 'class="tile"' not in page
    assert "pass --data with a split folder" in page

    # A folder of mixtures alone: estimates without references or scores.
    page = write_report(run, data=digits_dir / "test" / "mix", examples=3).read_text()
    assert page.count('class="tile"') == 3 * (1 + 2)
    assert "PSNR" not in page.split("<h2>Examples</h2>")[1]
    assert "no references, so no scores" in page


def test_audio_run_report_without_references(tones_dir, tmp_path):
    run = tmp_path / "run"
    run_surfsep("train", "--method", "mixit", "--data", str(tones_dir / "train"), "--out", str(run),
                "--steps", "2", "--batch-size", "4", "--channels", "8", "8", "16", "--segment-seconds", "0.25")
    page = write_report(run, data=tones_dir / "test" / "mix", examples=2).read_text()
    assert page.count("<audio ") == 2 * (1 + 2)
    assert "SI-SDRi" not in page.split("<h2>Examples</h2>")[1]

    # A long recording is shown by its first CLIP_SECONDS only.
    (tmp_path / "long").mkdir()
    rate = 8000
    seconds = np.arange(int((CLIP_SECONDS + 1) * rate)) / rate
    soundfile.write(tmp_path / "long" / "talk.wav", 0.3 * np.sin(2 * np.pi * 440 * seconds), rate)
    page = write_report(run, data=tmp_path / "long", out=tmp_path / "long.html").read_text()
    clips = [soundfile.read(io.BytesIO(base64.b64decode(payload)))[0]
             for payload in re.findall(r'src="data:audio/flac;base64,([^"]+)"', page)]
    assert [len(clip) for clip in clips] == [int(CLIP_SECONDS * rate)] * 3


def test_report_replaces_only_its_own_file(image_demo, tmp_path):
    target = tmp_path / "notes.html"
    target.write_text("<html>my notes</html>")
    result = run_surfsep("report", str(image_demo), "--out", str(target), check=False)
    assert result.returncode == 2
    assert f"{target} exists and is not a report written by surfsep" in result.stderr
    assert target.read_text() == "<html>my notes</html>"

    first = write_report(image_demo, out=tmp_path / "r.html", examples=1)
    write_report(image_demo, out=first, examples=2)
    assert first.read_text().count('<th class="name">') == 2
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@pytest.mark.parametrize("make, extra, message", [
    (lambda tmp: tmp / "missing", [], "missing not found; give a run, benchmark or demo folder"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", [], "notes.txt is a file; give a run, "
                                                                             "benchmark or demo folder"),
    (lambda tmp: tmp, [], "is not a run, benchmark or demo folder"),
    ("demo", ["--examples", "0"], "--examples must be at least 1, got 0"),
    ("demo", ["--data", "x"], "--data and --steps apply to a training run"),
    ("demo", ["--out", "."], "is a folder; give --out a file name"),
])
def test_bad_input_is_named(make, extra, message, image_demo, tmp_path):
    folder = image_demo if make == "demo" else make(tmp_path)
    result = run_surfsep("report", str(folder), *extra, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_unreadable_config_is_named(digits_dir, tmp_path):
    run = tmp_path / "run"
    run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(run),
                "--steps", "2", "--batch-size", "8", "--channels", "8", "16")
    (run / "config.json").write_text("{not json")
    with pytest.raises(ReportError, match=f"cannot read {re.escape(str(run / 'config.json'))}"):
        write_report(run)


def test_bench_without_results_is_refused(digits_dir, tmp_path):
    bench = tmp_path / "b"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"settings": {"data": str(digits_dir), "out": str(bench),
                                                               "samples": 64, "methods": ["mixit"]}}))
    with pytest.raises(ReportError, match="has no results.json yet"):
        write_report(bench)


browser = pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED,
                             reason="Chromium is not installed (apt-get install chromium)")


@browser
@pytest.mark.parametrize("kind", ["demo", "bench"])
def test_page_loads_in_chromium(kind, image_demo, audio_bench, tmp_path):
    assert CHROMIUM, "SURFSEP_REQUIRE_BROWSER=1 but no chromium on PATH"
    page = write_report(image_demo if kind == "demo" else audio_bench, out=tmp_path / "report.html")
    screenshot = tmp_path / "screenshot.png"
    found = check_page(page, screenshot, CHROMIUM)

    assert found.errors == []
    assert found.images and all(image["loaded"] for image in found.images), found.images
    text = page.read_text()
    assert len(found.images) == text.count("<img ")
    assert len(found.clips) == text.count("<audio ")
    if kind == "bench":
        assert found.clips and all(clip["loaded"] and clip["played"] for clip in found.clips), found.clips
        durations = {round(clip["duration"], 2) for clip in found.clips}
        assert durations == {0.5}  # the tone mixtures last 0.5 s
    with Image.open(screenshot) as picture:
        assert picture.width == 1280
    assert picture.height == min(found.height, 12000)


@browser
def test_browser_check_finds_broken_media(tmp_path):
    assert CHROMIUM, "SURFSEP_REQUIRE_BROWSER=1 but no chromium on PATH"
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img alt="bad" src="data:image/png;base64,AAAA">'
                    '<audio controls src="data:audio/flac;base64,AAAA"></audio>'
                    '<script>console.error("planted error")</script></body></html>')
    found = check_page(page, tmp_path / "shot.png", CHROMIUM)
    assert [image["loaded"] for image in found.images] == [False]
    assert [clip["loaded"] for clip in found.clips] == [False]
    assert any("planted error" in error for error in found.errors)


def test_chosen_mixtures_are_shown_in_order(image_demo, tmp_path):
    page = write_report(image_demo, out=tmp_path / "r.html", mixtures=["00003.png", "00001.png"]).read_text()
    assert re.findall(r'<th class="name">([^<]+)</th>', page) == ["00003.png", "00001.png"]
    assert "The mixtures 00003.png, 00001.png of" in page

    result = run_surfsep("report", str(image_demo), "--out", str(tmp_path / "s.html"), "--mixtures", "00001.png,nope.png",
                         check=False)
    assert result.returncode == 2
    assert "has no mixture named nope.png; names are paths under the mixture folder, such as 00000.png" in result.stderr
    assert not (tmp_path / "s.html").exists()
    with pytest.raises(ReportError, match="give --examples or --mixtures, not both"):
        write_report(image_demo, out=tmp_path / "t.html", examples=2, mixtures=["00001.png"])


def test_moved_benchmark_reports_without_examples(audio_bench, tmp_path):
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(audio_bench, moved)
    settings = json.loads((moved / "bench.json").read_text())
    settings["settings"]["data"] = "data/relative-to-where-it-ran"
    (moved / "bench.json").write_text(json.dumps(settings))
    page = write_report(moved, out=tmp_path / "r.html").read_text()
    assert "<audio " not in page
    assert "data/relative-to-where-it-ran/test is not found from here" in page
    assert "SI-SDRi dB" in page  # the tables are still there
