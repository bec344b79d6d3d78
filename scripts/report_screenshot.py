"""Write the report of a run, benchmark or demo folder, check it in headless Chromium, and save a screenshot.

    python scripts/report_screenshot.py FOLDER SCREENSHOT.png [--examples N] [--height PIXELS]

The check is the browser test's: no console errors, every image loaded, every audio clip loaded
and played. It prints what it found and exits with status 1 if anything failed. The screenshot
shows the top ``--height`` pixels of the page at 1280 pixels wide (the whole page if shorter).
Needs Chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from browser import check_page, find_chromium  # noqa: E402

from surfsep.files import atomic_write_bytes  # noqa: E402
from surfsep.report import write_report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="run, benchmark or demo folder")
    parser.add_argument("screenshot", type=Path, help="PNG file for the screenshot")
    parser.add_argument("--examples", type=int, help="mixtures to show (default: the report's)")
    parser.add_argument("--height", type=int, default=2400, help="pixels of the page to keep (default: 2400)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        parser.error("Chromium is not installed; apt-get install chromium")

    page = write_report(args.folder, examples=args.examples)
    with tempfile.TemporaryDirectory() as folder:
        full = Path(folder) / "page.png"
        found = check_page(page, full, chromium)
        with Image.open(full) as picture:
            top = picture.crop((0, 0, picture.width, min(picture.height, args.height)))
            # 256 colours keep text sharp and a spectrogram-filled page at about 40% of the RGB size.
            buffer = Path(folder) / "top.png"
            top.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, optimize=True)
        atomic_write_bytes(args.screenshot, buffer.read_bytes())

    failed_images = [image for image in found.images if not image["loaded"]]
    failed_clips = [clip for clip in found.clips if not (clip["loaded"] and clip["played"])]
    print(f"{page}: {len(found.images)} images ({len(failed_images)} failed), {len(found.clips)} audio clips "
          f"({len(failed_clips)} failed to load or play), {len(found.errors)} console errors; page height "
          f"{found.height} px; screenshot {args.screenshot}")
    for problem in [*found.errors, *map(str, failed_images), *map(str, failed_clips)]:
        print("  " + problem)
    return 1 if failed_images or failed_clips or found.errors else 0


if __name__ == "__main__":
    sys.exit(main())
