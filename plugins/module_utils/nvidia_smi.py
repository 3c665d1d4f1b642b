# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What nvidia-smi says about a host's GPUs, parsed; shipped to hosts with the nvidia_gpu_info module.

Only nvidia-smi's CSV query interface is read (`--query-gpu=... --format=csv,noheader,nounits`):
its field names are stable across driver branches, its human table is not.
"""
from __future__ import annotations

import csv

# (query field, key in the result, type). The order is the order of the columns nvidia-smi prints.
FIELDS = (
    ("index", "index", int),
    ("name", "name", str),
    ("uuid", "uuid", str),
    ("pci.bus_id", "pci_bus_id", str),
    ("memory.total", "memory_mib", int),
    ("compute_cap", "compute_capability", str),
    ("driver_version", "driver_version", str),
    ("pcie.link.gen.current", "pcie_link_gen", int),
    ("pcie.link.gen.max", "pcie_link_gen_max", int),
    ("pcie.link.width.current", "pcie_link_width", int),
    ("pcie.link.width.max", "pcie_link_width_max", int),
)
QUERY = ",".join(field[0] for field in FIELDS)
ARGV = ["--query-gpu=" + QUERY, "--format=csv,noheader,nounits"]

# nvidia-smi's markers for a value it cannot give. These mean "this card or driver has no such
# value" and are not errors; anything else in brackets, and ERR!, is a fault of the card.
UNAVAILABLE = {"[N/A]", "N/A", "[Not Supported]"}

# nvidia-smi exit codes (nvidia-smi(1), RETURN VALUE): 6 = no devices found, 9 = the NVIDIA driver
# is not loaded.
RC_NO_DEVICES = 6
RC_NO_DRIVER = 9


class NvidiaSmiError(ValueError):
    """Output that is not what the query asks for; the message quotes the line."""


def _value(raw: str, kind):
    """(value, error): the value as kind, or None with the raw text when it is an error marker."""
    text = raw.strip()
    if text in UNAVAILABLE:
        return None, None
    if text == "ERR!" or (text.startswith("[") and text.endswith("]")):
        return None, text
    if kind is int:
        try:
            return int(float(text)), None
        except ValueError:
            return None, text
    return text, None


def parse_gpus(csv_text: str) -> list[dict]:
    """One dict per line of `nvidia-smi <ARGV>`; unavailable values are None, faults are in 'errors'."""
    gpus = []
    for row in csv.reader(csv_text.strip().splitlines(), skipinitialspace=True):
        if not row:
            continue
        if len(row) != len(FIELDS):
            raise NvidiaSmiError(f"unexpected nvidia-smi line {','.join(row)!r}: expected {len(FIELDS)} "
                                 f"values ({QUERY})")
        gpu: dict = {"errors": {}}
        # no zip(strict=True): modules run on the host's Python, 3.8 and up; the length is checked above
        for (field, key, kind), raw in zip(FIELDS, row):  # noqa: B905
            value, error = _value(raw, kind)
            gpu[key] = value
            if error is not None:
                gpu["errors"][field] = error
        gpus.append(gpu)
    return gpus


def read(rc: int, out: str, err: str) -> dict:
    """The state of a host's GPUs from one nvidia-smi run: status, gpus, driver_version, message.

    status: ok | faulty (a GPU reports an error value) | no-devices | driver-not-loaded | failed.
    A missing nvidia-smi is decided by the caller (status no-nvidia-smi), since then nothing runs.
    """
    text = (out or "") + (err or "")
    if rc == RC_NO_DEVICES or "No devices were found" in text:
        return {"status": "no-devices", "gpus": [], "driver_version": None, "message": text.strip()}
    if rc == RC_NO_DRIVER or "couldn't communicate with the NVIDIA driver" in text:
        return {"status": "driver-not-loaded", "gpus": [], "driver_version": None, "message": text.strip()}
    if rc != 0:
        return {"status": "failed", "gpus": [], "driver_version": None,
                "message": f"nvidia-smi exited {rc}: {text.strip()}"}
    gpus = parse_gpus(out)
    drivers = sorted({g["driver_version"] for g in gpus if g["driver_version"]})
    faulty = [g for g in gpus if g["errors"]]
    message = "; ".join(f"GPU {g['index'] if g['index'] is not None else '?'} ({g['pci_bus_id'] or 'bus unknown'}): "
                        + ", ".join(f"{f} {v}" for f, v in g["errors"].items()) for g in faulty)
    status = "faulty" if faulty else "ok" if gpus else "no-devices"
    return {"status": status, "gpus": gpus,
            "driver_version": drivers[0] if drivers else None, "message": message}
