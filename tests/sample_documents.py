"""Sample documents for tests: a station's three manuals, written into a folder."""
from __future__ import annotations

from pathlib import Path

STATION_DOCS = {
    "pumps/coolant-pump.md": (
        "# Coolant pump P-7\n\n"
        "The coolant pump P-7 is primed by opening bleed valve V12 for thirty seconds\n"
        "while the pump runs at idle speed. Close V12 when coolant flows without bubbles.\n"
    ),
    "power/solar-array.txt": (
        "Solar array maintenance\n\n"
        "Clean the solar array panels every ninety days with deionised water.\n"
        "Never clean panels while the array is connected to the battery bus.\n"
    ),
    "radio/antenna.md": (
        "# Antenna alignment\n\n"
        "Point the high-gain antenna at azimuth 212 degrees before the evening pass.\n"
    ),
}


def write_docs(root: Path, files: dict[str, str] = STATION_DOCS) -> Path:
    """Write `files` (relative name -> text) under `root`, folders included; returns `root`."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
