"""``inv monitor.report``: captured traffic of a window against the live model's baseline.

Reads the captured records (``monitor.capture``, the same reader for the local bucket and S3),
measures them (``monitor.traffic``), runs the checks (``monitor.drift``) and writes
``reports/monitor/<time>/``: ``report.json``, ``summary.txt`` (one screen), ``classes.png``,
``confidence.png`` and ``statistics.png``. The directory is written under a temporary name
and renamed when complete. On AWS the figures also go to CloudWatch (``monitor.cloudwatch``).

Verdicts: ``no-drift`` (exit 0), ``drift`` (exit 3), ``too-few`` (fewer answered requests than
``min_records``: nothing is judged, exit 1).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.convert import ConvertOptions
from distracted_driver.data.image_stats import STATISTICS
from distracted_driver.model.artifact import ArtifactError
from distracted_driver.model.cache import fetch_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.model.registry import Registry
from distracted_driver.monitor import drift, plots
from distracted_driver.monitor.capture import iter_capture_records
from distracted_driver.monitor.traffic import Traffic, observe
from distracted_driver.storage import open_storage
from distracted_driver.train.baseline import Baseline, load_baseline

EXIT_DRIFT = 3
EXIT_TOO_FEW = 1
# Beside the load test's SLOs (load_test/slo.toml), in the repository (or the installed tree).
THRESHOLDS = Path(__file__).resolve().parents[3] / "load_test" / "drift.toml"
SHOWN_REFUSALS = 20  # refused requests listed in report.json (all are counted)


class MonitorError(RuntimeError):
    """The report cannot be made: no live model, no baseline, nothing captured."""


@dataclass(frozen=True)
class MonitorResult:
    directory: Path
    report: dict

    @property
    def verdict(self) -> str:
        return self.report["verdict"]

    @property
    def exit_code(self) -> int:
        return {"drift": EXIT_DRIFT, "too-few": EXIT_TOO_FEW}.get(self.verdict, 0)

    @property
    def line(self) -> str:
        return self.report["summary_line"]


def judge(traffic: Traffic, baseline: Baseline, limits: drift.DriftThresholds) -> dict:
    """Every check of the captured traffic against the baseline, and the verdict."""
    checks = {"refused": drift.refused_share(len(traffic.refused), traffic.requests, limits)}
    if traffic.answered:
        checks["predicted_classes"] = drift.class_shift(traffic.predicted_counts, baseline.predicted_counts, limits)
        checks["confidence"] = drift.confidence_shift(traffic.confidences, baseline.confidences, limits)
        checks["image_statistics"] = {
            name: drift.statistic_shift(traffic.statistics[name], baseline.statistic(name), limits)
            for name in STATISTICS
        }
    if traffic.features is not None and traffic.answered:
        covariance = baseline.projection.T @ baseline.feature_covariance @ baseline.projection
        checks["features"] = drift.feature_shift(
            baseline.project(traffic.features), covariance, baseline.validation_projected, limits
        )
    # Too few requests decide nothing; too few answers decide nothing but the share of refusals.
    for name, check in _flat(checks):
        needed = traffic.requests if name == "refused" else traffic.answered
        if needed < limits.min_records:
            check["drifted"] = None
    drifted = sorted(name for name, check in _flat(checks) if check.get("drifted"))
    if drifted:
        verdict = "drift"
    else:
        verdict = "no-drift" if traffic.answered >= limits.min_records else "too-few"
    return {"verdict": verdict, "drifted_checks": drifted, "checks": checks}


def _flat(checks: dict):
    for name, check in checks.items():
        if name == "image_statistics":
            yield from check.items()
        else:
            yield name, check


def summary_line(report: dict) -> str:
    """One line: the verdict, what drifted, the headline figures, the window."""
    checks, records = report["checks"], report["records"]
    window = f"{records['requests']} captured requests since {report['window']['since'] or 'the start'}"
    if report["verdict"] == "too-few":
        return (
            f"drift: not judged, {records['answered']} answered of {window} "
            f"(fewer than {report['thresholds']['min_records']})"
        )
    figures = []
    if "features" in checks and checks["features"]["ratio"] is not None:
        figures.append(f"features x{checks['features']['ratio']:.1f} of validation's spread")
    if "predicted_classes" in checks:
        figures.append(f"class PSI {checks['predicted_classes']['psi']:.2f}")
    if "confidence" in checks:
        figures.append(f"low confidence {checks['confidence']['low_confidence_share']:.0%}")
    figures.append(f"refused {checks['refused']['share']:.0%}")
    if report["verdict"] == "drift":
        head = f"DRIFT in {', '.join(report['drifted_checks'])}"
    else:
        head = "no drift"
    return f"{head} ({'; '.join(figures)}) over {window}"


def summary_text(report: dict) -> str:
    """The one-screen summary: the line, then one row per check."""
    rows = [("check", "captured", "baseline", "measure", "limit", "drift")]
    checks = report["checks"]
    if "predicted_classes" in checks:
        c = checks["predicted_classes"]
        rows.append(
            (
                "predicted classes",
                _top_class(c["captured_counts"]),
                _top_class(c["baseline_counts"]),
                f"PSI {c['psi']:.3f}, chi2 p {c['p_value']:.2g}",
                f"{c['limit']:g}",
                _mark(c),
            )
        )
    if "confidence" in checks:
        c = checks["confidence"]
        rows.append(
            (
                "confidence",
                f"median {c['captured_median']:.3f}",
                f"median {c['baseline_median']:.3f}",
                f"KS {c['ks_statistic']:.3f}, p {c['p_value']:.2g}",
                f"{c['limit']:g}",
                _mark(c),
            )
        )
        rows.append(
            (
                f"  low (< {report['thresholds']['low_confidence']:g})",
                f"{c['low_confidence_share']:.1%}",
                f"{c['baseline_low_confidence_share']:.1%}",
                "",
                f"{c['low_confidence_limit']:.1%}",
                "",
            )
        )
    for name, c in checks.get("image_statistics", {}).items():
        rows.append(
            (
                name,
                f"median {c['captured_median']:.4g}",
                f"median {c['baseline_median']:.4g}",
                f"KS {c['ks_statistic']:.3f}, p {c['p_value']:.2g}",
                f"{c['limit']:g}",
                _mark(c),
            )
        )
    if "features" in checks:
        c = checks["features"]
        if c["ratio"] is None:
            rows.append(("features (Frechet)", "", "", c["note"], "", "-"))
        else:
            rows.append(
                (
                    "features (Frechet)",
                    f"{c['frechet_distance']:.4g}",
                    f"ref {c['reference']:.4g}",
                    f"ratio {c['ratio']:.2f} ({c['components']} dims)",
                    f"{c['limit']:g}",
                    _mark(c),
                )
            )
    c = checks["refused"]
    rows.append(
        ("refused", f"{c['refused']} of {c['requests']}", "", f"{c['share']:.1%}", f"{c['limit']:.0%}", _mark(c))
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    model = report["model"]
    head = [
        f"drift report {report['created']}: endpoint {report['endpoint']}"
        f"{'/' + report['variant'] if report['variant'] else ''}, live model {model['version']}",
        report["summary_line"],
        "",
    ]
    return "\n".join(head + table) + "\n"


def _top_class(counts: dict) -> str:
    total = sum(counts.values()) or 1
    name, count = max(counts.items(), key=lambda item: item[1])
    return f"most {name} {count / total:.0%}"


def _mark(check: dict) -> str:
    return {True: "DRIFT", False: "ok", None: "-"}[check.get("drifted")]


def write_outputs(report: dict, traffic: Traffic, baseline: Baseline, out_root: Path) -> Path:
    """``out_root/<time>/`` with report.json, summary.txt and the plots, renamed into place when complete."""
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / report["id"]
    staging = Path(tempfile.mkdtemp(prefix=f".{report['id']}.tmp-", dir=out_root))
    try:
        title = f"{report['model']['version']}: {traffic.answered} captured answers"
        files = {"summary": "summary.txt", "report": "report.json"}
        if traffic.answered:
            checks = report["checks"]
            files["classes"] = plots.plot_classes(
                traffic.predicted_counts, baseline.predicted_counts, staging / "classes.png", title
            ).name
            files["confidence"] = plots.plot_confidence(
                traffic.confidences,
                baseline.confidences,
                report["thresholds"]["low_confidence"],
                staging / "confidence.png",
                title,
            ).name
            files["statistics"] = plots.plot_statistics(
                traffic.statistics,
                {name: baseline.statistic(name) for name in STATISTICS},
                checks["image_statistics"],
                staging / "statistics.png",
                title,
            ).name
        report["files"] = files
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "summary.txt").write_text(summary_text(report))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def drift_report(
    settings: Settings,
    since: datetime | None = None,
    variant: str | None = None,
    thresholds: str | Path | None = None,
    out_root: str | Path | None = None,
    progress: bool = False,
    now: datetime | None = None,
) -> MonitorResult:
    """Read the window's captured records, judge them against the live model's baseline, write the report."""

    now = now or datetime.now(UTC)
    limits = drift.DriftThresholds.load(thresholds or THRESHOLDS)
    storage = open_storage(settings)
    if Registry(storage, settings).live() is None:
        raise MonitorError("no model is live: deploy one first (inv pipeline.run or inv deploy.create)")
    artifact = fetch_artifact(settings, "live", storage)
    try:
        baseline = load_baseline(artifact)
        measuring = baseline.measured_with(artifact)  # live features from the file the baseline's came from
    except ArtifactError as error:
        raise MonitorError(str(error)) from None
    options, options_note = convert_options(storage, settings, artifact.provenance.get("data_manifest_sha256"))
    unreadable: list[str] = []
    records = iter_capture_records(
        storage, settings.capture_prefix, settings.endpoint_name, since=since, variant=variant, skipped=unreadable
    )
    traffic = observe(records, Classifier(measuring), options, progress)
    if traffic.requests == 0:
        where = storage.uri(f"{settings.capture_prefix}/{settings.endpoint_name}/")
        raise MonitorError(
            f"nothing captured under {where}{' since ' + since.isoformat() if since else ''}: "
            "is capture on? (inv deploy.capture --percent 100)"
        )
    report = {
        "id": now.strftime("%Y%m%dT%H%M%SZ"),
        "created": now.isoformat(timespec="seconds"),
        "endpoint": settings.endpoint_name,
        "variant": variant,
        "window": {
            "since": since.isoformat(timespec="seconds") if since else None,
            "until": now.isoformat(timespec="seconds"),
        },
        "model": {
            "version": artifact.version,
            "served_file": artifact.served_model_path.name,
            "model_file": baseline.summary["model_file"],
            "baseline_validation_images": baseline.summary["validation"]["images"],
            "baseline_statistic_images": baseline.summary["image_statistics"]["images"],
        },
        "records": {
            "requests": traffic.requests,
            "answered": traffic.answered,
            "refused": len(traffic.refused),
            "answered_by": dict(traffic.model_versions),
            "unreadable_lines": len(unreadable),
        },
        "refusals": [{"event_id": event, "reason": why} for event, why in traffic.refused[:SHOWN_REFUSALS]],
        "convert_options": {**options.to_dict(), "note": options_note},
        "thresholds": limits.to_dict(),
        **judge(traffic, baseline, limits),
    }
    report["summary_line"] = summary_line(report)
    directory = write_outputs(report, traffic, baseline, Path(out_root or settings.root / "reports" / "monitor"))
    if settings.backend == "aws":
        from distracted_driver.monitor.cloudwatch import put_drift_metrics

        put_drift_metrics(settings, report)
    return MonitorResult(directory, report)


def convert_options(storage, settings: Settings, manifest_sha256: str | None) -> tuple[ConvertOptions, str]:
    """How the live model's channels were converted (the data manifest's options), and where that came from."""
    key = f"{settings.data_prefix}/manifest.json"
    try:
        manifest = json.loads(storage.get_bytes(key))
    except (KeyError, ValueError):
        return ConvertOptions(), f"no readable {key}: the converter's defaults assumed"
    known = {k: v for k, v in manifest.get("options", {}).items() if k in ConvertOptions.__dataclass_fields__}
    options = ConvertOptions(**known)
    if manifest_sha256 and storage.checksum(key) != manifest_sha256:
        return options, f"{key} changed since the live model was trained; its options assumed unchanged"
    return options, f"from {key}, the live model's data"


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``24h``, ``90m``, ``2d``, ``30s`` before now, or an ISO 8601 time (UTC when it names no zone)."""

    if not value:
        return None
    now = now or datetime.now(UTC)
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    text = value.strip()
    if text[-1:].lower() in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(**{units[text[-1].lower()]: float(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since takes a duration like 24h, 90m, 2d or an ISO time, not {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
