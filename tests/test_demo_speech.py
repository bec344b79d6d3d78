import json

import soundfile

from conftest import run_surfsep


def test_speech_demo_runs_end_to_end(tones_dir, tmp_path):
    # The demo builds its own data unless dataset.json exists, so a tone set replaces the speech set.
    out = tmp_path / "demo"
    data = out / "data"
    data.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / split).symlink_to(tones_dir / split)
    (data / "dataset.json").write_text("{}")

    result = run_surfsep("demo", "speech", "--out", str(out), "--scale", "0.002", "--threads", "1")

    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"mixture", "mixit", "surf", "surf-teacher", "supervised-flow"}
    assert set(results["valid_sampler_sweep"]) == {"surf", "supervised-flow"}
    for name in ("surf", "supervised-flow"):
        sweep = results["valid_sampler_sweep"][name]
        assert results["methods"][name]["sampler_steps"] == int(max(sweep, key=sweep.get))
    assert results["paired_surf_minus_mixit"]["count"] == 4
    assert "| surf |" in result.stdout
    example = out / "examples" / "0000"
    names = sorted(path.name for path in example.iterdir())
    assert "mixture.wav" in names
    assert {"mixit_s1.wav", "surf_s2.wav", "supervised-flow_s1.wav", "reference_s2.wav"} <= set(names)
    assert soundfile.info(example / "surf_s1.wav").frames == soundfile.info(example / "mixture.wav").frames
