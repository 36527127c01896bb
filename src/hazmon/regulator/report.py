"""The compliance report a regulator files, per enterprise: installations and their GB 18218 grades,
required-monitoring gaps, the period's figures (`period.py`), the hidden-hazard findings
(`findings.py`) and the audit-trail head hash at the time it was made. Rendered as CSV, HTML or PDF
(WeasyPrint, from the HTML), in Chinese by default or in English.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from hazmon.plant.site import Site
from hazmon.regulator.installations import installation_grades
from hazmon.regulator.period import enterprise_figures, period_figures

FORMATS = ("json", "csv", "html", "pdf")
LANGS = ("zh", "en")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
CJK_FONTS = '"WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC"'

L: dict[str, dict[str, str]] = {
    "title": {
        "zh": "危险化学品重大危险源在线监测合规报告",
        "en": "Major hazard installation monitoring compliance report",
    },
    "enterprise": {"zh": "企业", "en": "Enterprise"},
    "uscc": {"zh": "统一社会信用代码", "en": "Unified social credit code"},
    "period": {"zh": "报告期", "en": "Period"},
    "generated": {"zh": "生成时间", "en": "Generated at"},
    "audit_head": {"zh": "审计链头", "en": "Audit-trail head"},
    "summary": {"zh": "总体情况", "en": "Summary"},
    "completeness": {"zh": "数据完整率", "en": "Data completeness"},
    "online": {"zh": "设备在线率", "en": "Device online ratio"},
    "status": {"zh": "运行状态", "en": "Operating status"},
    "threshold": {"zh": "稳定运行阈值", "en": "stable-operation threshold"},
    "alarms": {"zh": "报警（按优先级）", "en": "Alarms by priority"},
    "standing": {"zh": "长期报警（超过24小时）", "en": "Standing alarms (over 24 h)"},
    "sis_trips": {"zh": "SIS动作次数", "en": "SIS trips"},
    "retention": {"zh": "数据保存", "en": "Data retention"},
    "installations": {"zh": "重大危险源", "en": "Major hazard installations"},
    "site": {"zh": "场所", "en": "Site"},
    "id": {"zh": "编号", "en": "ID"},
    "name": {"zh": "名称", "en": "Name"},
    "grade": {"zh": "级别", "en": "Grade"},
    "ack": {"zh": "确认时间 中位数/P90（秒）", "en": "Time to acknowledge median/p90 (s)"},
    "gaps": {"zh": "数据中断", "en": "Data gaps"},
    "monitoring": {"zh": "监测配置缺项", "en": "Required monitoring missing"},
    "requirement": {"zh": "要求", "en": "Requirement"},
    "reason": {"zh": "依据", "en": "Reason"},
    "none": {"zh": "无", "en": "none"},
    "tag": {"zh": "位号", "en": "Tag"},
    "from": {"zh": "开始", "en": "From"},
    "to": {"zh": "结束", "en": "To"},
    "minutes": {"zh": "分钟", "en": "Minutes"},
    "findings": {"zh": "隐患自查自报", "en": "Hidden-hazard self-reports"},
    "open": {"zh": "未整改", "en": "Open"},
    "major_open": {"zh": "重大隐患（未销号）", "en": "Major, not closed"},
    "overdue": {"zh": "逾期", "en": "Overdue"},
    "median_close": {"zh": "整改时间中位数（天）", "en": "Median time to close (days)"},
    "not_major": {"zh": "非重大危险源", "en": "not a major hazard installation"},
    "days": {"zh": "天", "en": "days"},
    "ok": {"zh": "符合", "en": "met"},
    "not_ok": {"zh": "不符合", "en": "not met"},
    "critical": {"zh": "紧急", "en": "critical"},
    "high": {"zh": "高", "en": "high"},
    "medium": {"zh": "中", "en": "medium"},
    "low": {"zh": "低", "en": "low"},
    "stable": {"zh": "稳定运行", "en": "stable operation"},
    "unstable": {"zh": "未稳定运行", "en": "not in stable operation"},
}


def t(key: str, lang: str) -> str:
    return L[key][lang]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def _grade(g: Mapping[str, Any], lang: str) -> str:
    if not g["major_hazard"]:
        return t("not_major", lang)
    return str(g["grade_zh"]) if lang == "zh" else f"level {g['grade']}"


async def build_report(
    conn: asyncpg.Connection,
    enterprise_sites: Iterable[Site],
    keys: Mapping[str, int],
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    by_exception: Mapping[str, str] | None = None,
    devices: Mapping[str, Iterable[str]] | None = None,
    retention_days: int | None = None,
    gap_minutes: float = 10.0,
) -> dict[str, Any]:
    """The report of one enterprise (every site given must belong to it); ``devices``: per site id."""
    sites = list(enterprise_sites)
    if not sites:
        raise ValueError("a report needs at least one site")
    ent = sites[0].enterprise
    out_sites = []
    for s in sites:
        fig = await period_figures(
            conn,
            s,
            keys,
            start,
            end,
            by_exception=by_exception,
            devices=(devices or {}).get(s.id, ()),
            gap_minutes=gap_minutes,
            retention_days=retention_days,
        )
        grades = installation_grades(s, retention_days)
        for g in grades:
            g["period"] = fig["installations"][g["id"]]
        out_sites.append({**fig, "site": s.id, "name": s.site.name, "installations": grades})
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    return {
        "enterprise": {"id": ent.id, "name": ent.name, "uscc": ent.uscc},
        "timezone": sites[0].site.timezone,  # times in the HTML and PDF are shown in it
        "from": start.isoformat(),
        "to": end.isoformat(),
        "generated_at": now.isoformat(),
        "audit_head": None if head is None else {"seq": head["seq"], "hash": head["hash"]},
        "figures": enterprise_figures(out_sites),
        "sites": out_sites,
        "findings": await findings_for_report(conn, ent.id, [s.id for s in sites], start, end, now),
    }


async def findings_for_report(
    conn: asyncpg.Connection, enterprise_id: str, site_ids: list[str], start: datetime, end: datetime, now: datetime
) -> dict[str, Any] | None:
    """Hook for the hidden-hazard findings (part 2 of issue 13): their per-enterprise summary, or None
    where the findings module or its table is not there."""
    try:
        from hazmon.regulator.findings import findings_summary
    except ImportError:  # pragma: no cover - the findings module is part of this package today
        return None
    try:
        summary = await findings_summary(
            conn, enterprise_id=enterprise_id, site_ids=site_ids, start=start, end=end, now=now
        )
    except asyncpg.UndefinedTableError:
        return None
    return summary.as_dict()


# ---------------------------------------------------------------- rendering


def render_csv(reports: list[dict[str, Any]], lang: str = "zh") -> str:
    """One row per installation, then one per enterprise (installation ``*``)."""
    cols = {
        "zh": [
            "企业", "统一社会信用代码", "场所", "重大危险源编号", "名称", "级别", "R", "S", "数据完整率", "设备在线率",
            "紧急报警", "高优先级报警", "中优先级报警", "低优先级报警", "确认时间中位数(秒)", "确认时间P90(秒)",
            "长期报警", "SIS动作次数", "数据中断次数", "监测配置缺项", "运行状态", "开始", "结束", "生成时间",
            "审计链头",
        ],
        "en": [
            "enterprise", "uscc", "site", "installation", "name", "grade", "R", "S", "completeness", "online_ratio",
            "alarms_critical", "alarms_high", "alarms_medium", "alarms_low", "median_time_to_ack_s",
            "p90_time_to_ack_s", "standing_alarms", "sis_trips", "gaps", "monitoring_missing", "status", "from", "to",
            "generated_at", "audit_head",
        ],
    }[lang]  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(cols)
    for rep in reports:
        e = rep["enterprise"]
        head = rep["audit_head"]
        tail = [rep["from"], rep["to"], rep["generated_at"], "" if head is None else f"{head['seq']}:{head['hash']}"]
        for s in rep["sites"]:
            for i in s["installations"]:
                g, p = i["gb18218"], i["period"]
                ap = p["alarms_by_priority"]
                missing = "; ".join(
                    f"{m['equipment'] or m['installation']}: {m[lang]}" for m in i["monitoring_missing"]
                )
                w.writerow(
                    [
                        e["name"], e["uscc"], s["site"], i["id"], i["name"], g["grade"] or "", g["r"], g["s"],
                        p["completeness"], s["online_ratio"], ap["critical"], ap["high"], ap["medium"], ap["low"],
                        p["handling"]["median_time_to_ack_s"], p["handling"]["p90_time_to_ack_s"],
                        len(p["standing_alarms"]), p["sis_trips"], p["gaps"], missing, "", *tail,
                    ]
                )  # fmt: skip
        f = rep["figures"]
        ap = f["alarms_by_priority"]
        w.writerow(
            [
                e["name"], e["uscc"], "*", "*", "", "", "", "", f["completeness"], f["online_ratio"], ap["critical"],
                ap["high"], ap["medium"], ap["low"], "", "", f["standing_alarms"], f["sis_trips"], f["gaps"], "",
                t(f["status"], lang), *tail,
            ]
        )  # fmt: skip
    return buf.getvalue()


_CSS = f"""
@page {{ size: A4; margin: 16mm 14mm;
  @bottom-right {{ content: counter(page) " / " counter(pages); font-size: 8pt; }} }}
body {{ font-family: {CJK_FONTS}, sans-serif; font-size: 9.5pt; color: #111; }}
h1 {{ font-size: 15pt; margin: 0 0 6pt; }} h2 {{ font-size: 12pt; margin: 14pt 0 4pt; border-bottom: 1px solid #999; }}
h3 {{ font-size: 10.5pt; margin: 10pt 0 3pt; }}
table {{ border-collapse: collapse; width: 100%; margin: 3pt 0; }}
th, td {{ border: 0.5pt solid #888; padding: 2pt 4pt; text-align: left; vertical-align: top; }}
th {{ background: #eee; }} td.n {{ text-align: right; }}
.hash {{ font-family: monospace; font-size: 7.5pt; word-break: break-all; }}
.bad {{ color: #a00; font-weight: bold; }} .ok {{ color: #060; }} .nw {{ white-space: nowrap; }}
"""


def _e(x: Any) -> str:
    return html.escape("—" if x is None else str(x))


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _local(iso: str, tz: str) -> str:
    """An ISO time in the site's time zone, as people there read it: 2026-11-30 18:55:16 (UTC+08:00)."""
    try:
        t = datetime.fromisoformat(iso).astimezone(ZoneInfo(tz))
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return _e(iso)
    offset = t.strftime("%z")
    return _e(f"{t:%Y-%m-%d %H:%M:%S} (UTC{offset[:3]}:{offset[3:]})")


def _enterprise_html(rep: dict[str, Any], lang: str) -> str:
    e, f = rep["enterprise"], rep["figures"]
    tz = str(rep.get("timezone") or "UTC")
    head = rep["audit_head"]
    ap = f["alarms_by_priority"]
    status_cls = "ok" if f["status"] == "stable" else "bad"
    parts = [
        f"<h1>{t('title', lang)}</h1>",
        _table(
            [t("enterprise", lang), t("uscc", lang), t("period", lang), t("generated", lang)],
            [
                [
                    _e(e["name"]),
                    _e(e["uscc"]),
                    f"{_local(rep['from'], tz)} — {_local(rep['to'], tz)}",
                    _local(rep["generated_at"], tz),
                ]
            ],
        ),
        f"<p>{t('audit_head', lang)}: seq {_e(head and head['seq'])} "
        f"<span class='hash'>{_e(head and head['hash'])}</span></p>",
        f"<h2>{t('summary', lang)}</h2>",
        _table(
            [t("completeness", lang), t("online", lang), t("status", lang), t("standing", lang), t("sis_trips", lang)],
            [
                [
                    _pct(f["completeness"]),
                    _pct(f["online_ratio"]),
                    f"<span class='{status_cls}'>{t(f['status'], lang)}</span> "
                    f"({t('threshold', lang)} {_pct(f['stable_threshold'])})",
                    _e(f["standing_alarms"]),
                    _e(f["sis_trips"]),
                ]
            ],
        ),
        _table(
            [t("alarms", lang), t("critical", lang), t("high", lang), t("medium", lang), t("low", lang)],
            [["", _e(ap["critical"]), _e(ap["high"]), _e(ap["medium"]), _e(ap["low"])]],
        ),
    ]
    for s in rep["sites"]:
        ret = s["retention"]
        ret_txt = (
            f"{_e(ret['configured_days'])} {t('days', lang)} (≥ {ret['required_days']}): "
            f"{t('ok' if ret['ok'] else 'not_ok', lang)}"
        )
        parts.append(f"<h2>{t('site', lang)} {_e(s['site'])} {_e(s['name'])}</h2>")
        parts.append(f"<p>{t('retention', lang)}: {ret_txt}; {t('online', lang)} {_pct(s['online_ratio'])}</p>")
        parts.append(f"<h3>{t('installations', lang)}</h3>")
        rows = []
        for i in s["installations"]:
            g, p = i["gb18218"], i["period"]
            h = p["handling"]
            rows.append(
                [
                    _e(i["id"]),
                    _e(i["name"]),
                    f"<span class='nw'>{_e(_grade(g, lang))}</span>",
                    f"{g['r']:g}",
                    f"{g['s']:g}",
                    _pct(p["completeness"]),
                    _e(p["alarms"]),
                    f"{_e(h['median_time_to_ack_s'])} / {_e(h['p90_time_to_ack_s'])}",
                    _e(len(p["standing_alarms"])),
                    _e(p["sis_trips"]),
                    _e(p["gaps"]),
                ]
            )
        parts.append(
            _table(
                [
                    t("id", lang),
                    t("name", lang),
                    t("grade", lang),
                    "R",
                    "S",
                    t("completeness", lang),
                    t("alarms", lang),
                    t("ack", lang),
                    t("standing", lang),
                    t("sis_trips", lang),
                    t("gaps", lang),
                ],
                rows,
            )
        )
        missing = [m for i in s["installations"] for m in i["monitoring_missing"]]
        parts.append(f"<h3>{t('monitoring', lang)}</h3>")
        if missing:
            parts.append(
                _table(
                    [t("id", lang), t("requirement", lang), t("reason", lang)],
                    [[_e(m["equipment"] or m["installation"]), _e(m[lang]), _e(m["reason"])] for m in missing],
                )
            )
        else:
            parts.append(f"<p>{t('none', lang)}</p>")
        gaps = [(tf["id"], g) for tf in s["tag_figures"] for g in tf["gap_list"]]
        parts.append(f"<h3>{t('gaps', lang)} ({s['gap_minutes']:g} {t('minutes', lang)}+)</h3>")
        if gaps:
            parts.append(
                _table(
                    [t("tag", lang), t("from", lang), t("to", lang), t("minutes", lang)],
                    [[_e(tag), _local(g["from"], tz), _local(g["to"], tz), _e(g["minutes"])] for tag, g in gaps[:200]],
                )
            )
        else:
            parts.append(f"<p>{t('none', lang)}</p>")
    parts.append(f"<h2>{t('findings', lang)}</h2>")
    fs = rep["findings"]
    if fs is None:
        parts.append(f"<p>{t('none', lang)}</p>")
    else:
        parts.append(
            _table(
                [t("open", lang), t("major_open", lang), t("overdue", lang), t("median_close", lang)],
                [[_e(fs["open"]), _e(fs["major_open"]), _e(fs["overdue"]), _e(fs["median_days_to_close"])]],
            )
        )
    return "<section>" + "\n".join(parts) + "</section>"


def render_html(reports: list[dict[str, Any]], lang: str = "zh") -> str:
    body = "\n<div style='page-break-after: always'></div>\n".join(_enterprise_html(r, lang) for r in reports)
    title = t("title", lang)
    html_lang = "zh-CN" if lang == "zh" else "en"
    return (
        f"<!DOCTYPE html><html lang='{html_lang}'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


class ReportUnavailable(RuntimeError):
    """The PDF cannot be made on this machine (WeasyPrint or its system libraries are missing)."""


def render_pdf(reports: list[dict[str, Any]], lang: str = "zh") -> bytes:
    try:
        from weasyprint import HTML  # type: ignore[import-untyped]
    except (ImportError, OSError) as e:  # OSError: Pango or its fonts are not installed
        raise ReportUnavailable(
            f"PDF reports need WeasyPrint and Pango with a CJK font (deploy/services.sh installs them): {e}"
        ) from None
    pdf = HTML(string=render_html(reports, lang)).write_pdf()
    assert pdf is not None
    return bytes(pdf)


def render(reports: list[dict[str, Any]], fmt: str, lang: str) -> bytes:
    if fmt == "csv":
        return render_csv(reports, lang).encode("utf-8-sig")  # the BOM makes spreadsheet programs read UTF-8
    if fmt == "html":
        return render_html(reports, lang).encode("utf-8")
    if fmt == "pdf":
        return render_pdf(reports, lang)
    raise ValueError(f"unknown report format {fmt!r}: {', '.join(FORMATS)}")
