"""What the infrastructure checks report: named findings, each passed or failed, and their report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    variant: str | None = "defaults"  # which variable values ("defaults", a tfvars env, a role); None: not shown
    warning: bool = False  # passed, with a caveat worth reading

    @property
    def status(self) -> str:
        return "FAIL" if not self.ok else "warn" if self.warning else "ok"

    def __str__(self) -> str:
        where = f"[{self.variant}] " if self.variant is not None else ""
        return f"{self.status:<4} {where}{self.check}: {self.detail}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        return "\n".join(str(finding) for finding in self.findings)
