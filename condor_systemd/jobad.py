"""Read what condor-systemd needs from HTCondor's job and machine ads.

The starter writes the ads as ``Name = value`` lines and points $_CONDOR_JOB_AD /
$_CONDOR_MACHINE_AD at them. We need only plain literals, so this is a line reader, not a ClassAd
evaluator: expressions are ignored.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # (the thin client imports this module: no collections.abc at run time)
    from collections.abc import Mapping


def read_ad(path: str) -> dict[str, str]:
    """Attribute -> literal text (strings unquoted). Unreadable files give an empty ad."""
    ad: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition("=")
                if not sep:
                    continue
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1].replace('\\"', '"')
                ad[name.strip().lower()] = value
    except OSError:
        pass
    return ad


def job_id_from_env(environ: Mapping[str, str]) -> str | None:
    """'ClusterId.ProcId' from $_CONDOR_JOB_AD, or None when there is no usable ad."""
    path = environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    ad = read_ad(path)
    cluster, proc = ad.get("clusterid", ""), ad.get("procid", "")
    if cluster.isdigit() and proc.isdigit():
        return f"{int(cluster)}.{int(proc)}"
    return None


def slot_from_env(environ: Mapping[str, str]) -> str | None:
    slot = environ.get("_CONDOR_SLOT")
    if slot:
        return slot
    path = environ.get("_CONDOR_MACHINE_AD")
    return read_ad(path).get("name") if path else None


# What the slot and the job are, for the unit HTCondor itself would give the job (htcondor.py):
# (ad, attribute) -> key of the Run call's "htcondor" parameter; integers are below their bound.
_FACTS = (("job", "clusterid", "cluster"), ("job", "procid", "proc"),
          ("job", "globaljobid", "global_job_id"), ("job", "owner", "owner"),
          ("machine", "cpus", "cpus"), ("machine", "memory", "memory_mb"))
INTEGER_BOUNDS = {"cluster": 2**31, "proc": 2**31, "cpus": 2**16, "memory_mb": 2**50}
MAX_TEXT = 255


def facts_from_env(environ: Mapping[str, str]) -> dict | None:
    """The slot's size and the job's identity from the ads, as plain JSON values; None when
    not under HTCondor. A value that is missing or not a plain literal of its kind is left
    out (the documented default applies), never an error: the job still runs."""
    paths = {"job": environ.get("_CONDOR_JOB_AD"), "machine": environ.get("_CONDOR_MACHINE_AD")}
    if not any(paths.values()):
        return None
    ads = {kind: read_ad(path) if path else {} for kind, path in paths.items()}
    facts: dict = {}
    for kind, attribute, key in _FACTS:
        text = ads[kind].get(attribute)
        if text is None:
            continue
        if key in INTEGER_BOUNDS:
            if text.isdigit() and len(text) <= 20 and int(text) < INTEGER_BOUNDS[key]:
                facts[key] = int(text)
        elif text and len(text) <= MAX_TEXT and text.isprintable():
            facts[key] = text
    slot = slot_from_env(environ)
    if slot and len(slot) <= MAX_TEXT and slot.isprintable():
        facts["slot"] = slot
    return facts


def wants_remote_updates(environ: Mapping[str, str]) -> bool:
    """Does the starter take the job's user-log events (Chirp's ulog)? The job ad's
    WantRemoteUpdates, which defaults to its WantIOProxy; both default to false."""
    path = environ.get("_CONDOR_JOB_AD")
    ad = read_ad(path) if path else {}
    value = ad.get("wantremoteupdates", ad.get("wantioproxy", "false"))
    return value.strip().lower() == "true"
