/* hazmon operator console. No framework and nothing from the network but this server: the page follows
   the live WebSocket, acts through the API with the operator's token, and shows every time in the
   site's time zone. */
"use strict";

// ------------------------------------------------------------------ language
const TEXT = {
  zh: {
    title: "报警控制台", silence: "消音", logout: "退出", connect: "连接",
    login_help: "粘贴 API 令牌（操作员可处理本厂区报警，监管人员只读）。make demo 会打印一个。",
    tab_alarms: "报警", tab_overview: "总貌", tab_history: "报警历史", tab_handover: "交接班",
    group_by_inst: "按装置分组", ack_selected: "确认所选", col_priority: "优先级", col_activated: "报警时间",
    col_alarm: "报警", col_value: "实时值 / 限值", col_state: "状态", col_changed: "最后变化", col_time: "时间", col_val: "值",
    col_action: "动作", col_user: "用户", col_comment: "备注", no_alarms: "无报警", trend: "趋势",
    event_log: "事件记录", from: "从", to: "到", tag_ph: "位号", user_ph: "用户", search: "查询", prev: "上一页",
    next: "下一页", shift_hours: "班次时长（小时）", refresh: "刷新", print: "打印", cancel: "取消", ok: "确定",
    all_inst: "全部装置", all_equip: "全部设备", all_prio: "全部优先级", all_state: "全部状态",
    live: "实时", connecting: "连接中…", reconnecting: "重新连接中…", token_refused: "令牌无效",
    stale: (s) => `连接中断，最后更新 ${s} 前 — 列表不是实时的`,
    unacked: "未确认", critical: "紧急", high: "高", medium: "中", low: "低",
    active_unack: "报警未确认", active_ack: "报警已确认", rtn_unack: "已恢复未确认", shelved: "已搁置",
    suppressed: "已抑制", out_of_service: "已停用", normal: "正常",
    ack: "确认", shelve: "搁置", unshelve: "取消搁置", comment: "备注", oos: "停用", rts: "恢复投用", reset: "复位",
    shelve_title: (id) => `搁置 ${id}`, oos_title: (id) => `停用 ${id}`, comment_title: (id) => `备注 ${id}`,
    duration: "时长", reason: "原因（必填）", text: "内容", remaining: (t) => `剩余 ${t}`, until: "至",
    by: "由", failed: (a, m) => `${a} 失败：${m}`, role: (r) => ({ operator: "操作员", engineer: "工程师",
      regulator: "监管", admin: "管理员" })[r] || r, readonly: "只读",
    cause: "原因", consequence: "后果", action: "处置措施", respond_within: "响应时限",
    minutes: (n) => `${n} 分钟`, no_response: "此报警未定义处置说明",
    grade: (g) => (g ? `${["", "一", "二", "三", "四"][g]}级重大危险源` : "非重大危险源"),
    comm_ok: "通信正常", comm_lost: "通信中断", no_data: "无数据", worst: "最高报警",
    add_pen: "+ 添加笔", range: "范围", limits: "报警限",
    ho_title: (a, b) => `交接班报告 ${a} — ${b}`, ho_standing: "在线报警", ho_shelved: "已搁置报警",
    ho_oos: "已停用报警", ho_comments: "备注", ho_rate: "每 10 分钟报警数", ho_ack: "确认用时",
    ho_ack_stats: (n, med, p90, max) => `确认 ${n} 次；中位 ${med}，90% ${p90}，最长 ${max}`, none: "无",
    kind_level: "液位", kind_temperature: "温度", kind_pressure: "压力", kind_flow: "流量", kind_gas: "气体",
    page: (p) => `第 ${p} 页`, actions_of: {
      activate: "报警", clear: "恢复", acknowledge: "确认", reset: "复位", realarm: "再报警", shelve: "搁置",
      unshelve: "取消搁置", suppress: "抑制", unsuppress: "解除抑制", remove_from_service: "停用",
      return_to_service: "恢复投用", comment: "备注" },
  },
  en: {
    title: "Alarm console", silence: "Silence", logout: "Log out", connect: "Connect",
    login_help: "Paste an API token (operators act on alarms of their sites; regulators read). make demo prints one.",
    tab_alarms: "Alarms", tab_overview: "Overview", tab_history: "History", tab_handover: "Shift handover",
    group_by_inst: "Group by installation", ack_selected: "Acknowledge selected", col_priority: "Priority",
    col_activated: "Activated", col_alarm: "Alarm", col_value: "Live value / limit", col_state: "State",
    col_changed: "Last change", col_time: "Time", col_action: "Action", col_user: "User", col_comment: "Comment", col_val: "Value",
    no_alarms: "No alarms", trend: "Trend", event_log: "Events", from: "From", to: "To", tag_ph: "tag",
    user_ph: "user", search: "Search", prev: "Previous", next: "Next", shift_hours: "Shift length (hours)",
    refresh: "Refresh", print: "Print", cancel: "Cancel", ok: "OK",
    all_inst: "All installations", all_equip: "All equipment", all_prio: "All priorities", all_state: "All states",
    live: "live", connecting: "connecting…", reconnecting: "reconnecting…", token_refused: "token refused",
    stale: (s) => `Connection lost, last update ${s} ago — this list is not live`,
    unacked: "Unacknowledged", critical: "Critical", high: "High", medium: "Medium", low: "Low",
    active_unack: "active, unacknowledged", active_ack: "active, acknowledged", rtn_unack: "cleared, unacknowledged",
    shelved: "shelved", suppressed: "suppressed", out_of_service: "out of service", normal: "normal",
    ack: "Ack", shelve: "Shelve", unshelve: "Unshelve", comment: "Comment", oos: "Out of service",
    rts: "Return to service", reset: "Reset",
    shelve_title: (id) => `Shelve ${id}`, oos_title: (id) => `Remove ${id} from service`,
    comment_title: (id) => `Comment on ${id}`, duration: "Duration", reason: "Reason (required)", text: "Text",
    remaining: (t) => `${t} left`, until: "until", by: "by", failed: (a, m) => `${a} failed: ${m}`,
    role: (r) => r, readonly: "read only",
    cause: "Cause", consequence: "Consequence", action: "Operator action", respond_within: "Respond within",
    minutes: (n) => `${n} min`, no_response: "No alarm response is defined for this alarm",
    grade: (g) => (g ? `Grade ${g} major hazard installation` : "not a major hazard installation"),
    comm_ok: "communication ok", comm_lost: "communication lost", no_data: "no data", worst: "worst alarm",
    add_pen: "+ add pen", range: "range", limits: "limits",
    ho_title: (a, b) => `Shift handover ${a} — ${b}`, ho_standing: "Standing alarms", ho_shelved: "Shelved alarms",
    ho_oos: "Out-of-service alarms", ho_comments: "Comments", ho_rate: "Alarms per 10 minutes",
    ho_ack: "Time to acknowledge",
    ho_ack_stats: (n, med, p90, max) => `${n} acknowledged; median ${med}, 90th percentile ${p90}, longest ${max}`,
    kind_level: "level", kind_temperature: "temperature", kind_pressure: "pressure", kind_flow: "flow", kind_gas: "gas",
    none: "none", page: (p) => `page ${p}`, actions_of: {},
  },
};
const storedLang = localStorage.getItem("hazmon-lang");
let lang = storedLang || ((navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en");
const t = (key, ...args) => {
  const v = TEXT[lang][key] ?? TEXT.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
};

// ------------------------------------------------------------------ state
const PRIORITY = { critical: 0, high: 1, medium: 2, low: 3 };
const SHAPE = { critical: "■", high: "▲", medium: "◆", low: "●" };
const UNACK = new Set(["active_unack", "rtn_unack"]);
const RANGES = [["15 min", 900], ["1 h", 3600], ["8 h", 28800], ["24 h", 86400]];
const PEN_COLOURS = ["#1f4e79", "#6b3fa0", "#2f7d32", "#8a5a00"];
// Tags, equipment and installations are named across sites by their reference "site/id": two sites
// may both have a T101.LT. Operators see the id as its site names it, with the site's name beside it
// when the console shows more than one site.
const alarms = new Map(); // alarm id (site/tag:condition) -> alarm
const values = new Map(); // tag reference -> {site, tag, ts_us, value, quality}
const tags = new Map(); // tag reference -> tag (with site and ref)
const equipment = new Map(); // equipment reference -> equipment (with site and ref)
const installations = new Map(); // installation reference -> installation (with site and ref)
const sites = new Map(); // site id -> site
const audible = new Map(); // alarm id -> priority, new unacknowledged alarms not yet silenced
const silenced = new Set(); // alarm ids silenced by the operator (until they alarm again)
let ctx = null;
let tz = "Asia/Shanghai";
let token = sessionStorage.getItem("hazmon-token") || new URLSearchParams(location.search).get("token");
let ws = null;
let wsUp = false;
let statusKey = "connecting";
const setStatusText = (key) => { statusKey = key; $("status").textContent = t(key); };
let lastUpdate = 0; // ms, last message from the server
let selected = null; // alarm id shown in the detail panel
let dirty = false; // live values arrived since the list was drawn
const checked = new Set();
const trend = { pens: [], range: 900, data: new Map(), timer: null };
const hist = { offset: 0, limit: 50, next: null };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (v) => (v === null || v === undefined ? "—" : Math.abs(v) >= 1000 ? Number(v).toFixed(0) : Number(v).toPrecision(4));
const nameOf = (o) => (o ? (lang === "zh" ? o.name_zh || o.name : o.name) : "");
const refOf = (site, id) => `${site}/${id}`;
// the id within its site: "demo/T101.LT" -> "T101.LT", "demo/T101.LT:level.HH" -> "T101.LT:level.HH";
// a system alarm ("hazmon.storage:comm.LOSS") has no site
const localOf = (ref) => ref.slice(ref.indexOf("/") + 1);
// a URL path of a site-scoped id: each segment encoded, the slashes kept
const pathOf = (id) => id.split("/").map(encodeURIComponent).join("/");
const tagRefOf = (a) => (a.tag && a.site ? refOf(a.site, a.tag) : null); // an alarm's (or value's) tag
// what raised an alarm: its tag, a device ("site/gateway.device") or a component ("hazmon.storage")
const ownerOf = (a) => tagRefOf(a) || a.alarm_id.slice(0, a.alarm_id.lastIndexOf(":"));
const multiSite = () => !!ctx && ctx.sites.length > 1;
const siteName = (id) => (sites.has(id) ? nameOf(sites.get(id)) : id || "");
// the site's name, where the console shows more than one site ("" otherwise)
const siteOf = (site) => (multiSite() && site ? siteName(site) : "");
const alarmLabel = (a) => localOf(a.alarm_id); // "V101.GT1:gas.H", as its site names it
const alarmTitle = (a) => { const s = siteOf(a.site); return s ? `${alarmLabel(a)} (${s})` : alarmLabel(a); };
const siteBadge = (site) => { const s = siteOf(site); return s ? ` <span class="site" data-testid="site">${esc(s)}</span>` : ""; };
const tagName = (ref) => {
  const tg = tags.get(ref);
  return tg ? nameOf(tg) : ref ? localOf(ref) : "";
};
const tagLabel = (ref) => { // a pen, a filter option: "T101.LT" or "T101.LT (north works)"
  const tg = tags.get(ref);
  if (!tg) return localOf(ref);
  const s = siteOf(tg.site);
  return s ? `${tg.id} (${s})` : tg.id;
};
const placeLabel = (o) => { const s = siteOf(o.site); return `${o.id} ${nameOf(o)}${s ? ` (${s})` : ""}`; };

// ------------------------------------------------------------------ times, in the site's time zone
const fmtCache = new Map();
function dtf(opts) {
  const key = lang + tz + JSON.stringify(opts);
  if (!fmtCache.has(key)) {
    fmtCache.set(key, new Intl.DateTimeFormat(lang === "zh" ? "zh-CN" : "en-GB", { timeZone: tz, hourCycle: "h23", ...opts }));
  }
  return fmtCache.get(key);
}
const ms = (iso) => (iso ? Date.parse(iso) : NaN);
function clock(iso, withDate) {
  const d = ms(iso);
  if (Number.isNaN(d)) return "—";
  const sameDay = dtf({ dateStyle: "short" }).format(d) === dtf({ dateStyle: "short" }).format(Date.now());
  const time = dtf({ hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(d);
  return withDate || !sameDay ? `${dtf({ month: "2-digit", day: "2-digit" }).format(d)} ${time}` : time;
}
function fullTime(iso) {
  const d = ms(iso);
  return Number.isNaN(d) ? "" : `${dtf({ dateStyle: "medium", timeStyle: "medium" }).format(d)} (${tz})`;
}
function span(seconds) {
  const s = Math.max(0, seconds);
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
const ago = (iso) => (iso ? span((Date.now() - ms(iso)) / 1000) : "");
// a datetime-local input holds the site's wall clock; convert both ways through the offset
function offsetMs(at) {
  const parts = Object.fromEntries(dtf({ year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", second: "2-digit" }).formatToParts(at).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour % 24, +parts.minute, +parts.second);
  return wall - Math.floor(at / 1000) * 1000;
}
const toLocalInput = (at) => new Date(at + offsetMs(at)).toISOString().slice(0, 19);
const fromLocalInput = (text) => {
  const wall = Date.parse(`${text}Z`);
  return wall - offsetMs(wall);
};

// ------------------------------------------------------------------ API
async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) {
    const detail = await r.json().then((j) => j.detail).catch(() => r.statusText);
    const err = new Error(`${r.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    err.status = r.status;
    throw err;
  }
  return r.json();
}

// ------------------------------------------------------------------ sound (Web Audio, no files)
let audio = null;
const TONES = { critical: [988, 0.12, 4], high: [784, 0.18, 2], medium: [659, 0.3, 1], low: [523, 0.3, 1] };
function ensureAudio() {
  if (!audio) {
    try { audio = new AudioContext(); } catch { audio = null; }
  }
  if (audio && audio.state === "suspended") audio.resume();
}
function tone(priority) {
  window.hazmonLastTone = priority; // for tests and diagnostics
  if (!audio) return;
  const [freq, len, n] = TONES[priority] || TONES.low;
  let at = audio.currentTime;
  for (let i = 0; i < n; i++) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = priority === "critical" ? "square" : "sine";
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.15, at);
    gain.gain.exponentialRampToValueAtTime(0.001, at + len);
    osc.connect(gain).connect(audio.destination);
    osc.start(at);
    osc.stop(at + len);
    at += len * 1.6;
  }
}
function annunciate() {
  if (!ctx.user.may_operate) return; // the horn is for the operators who answer it
  for (const id of [...audible.keys()]) {
    const a = alarms.get(id);
    if (!a || !UNACK.has(a.state)) audible.delete(id);
  }
  $("silence").classList.toggle("hidden", audible.size === 0);
  if (audible.size === 0) return;
  const worst = [...audible.values()].sort((a, b) => PRIORITY[a] - PRIORITY[b])[0];
  tone(worst);
}

// ------------------------------------------------------------------ alarm list
function filtered() {
  const inst = $("f-inst").value, eq = $("f-equip").value, pr = $("f-prio").value, st = $("f-state").value;
  return [...alarms.values()].filter((a) => {
    const owner = tags.get(ownerOf(a));
    if (inst && (!owner || equipment.get(owner.equipmentRef)?.installationRef !== inst)) return false;
    if (eq && (!owner || owner.equipmentRef !== eq)) return false;
    if (pr && a.priority !== pr) return false;
    return !(st && a.state !== st);
  });
}
// priority, then unacknowledged first, then newest activation (the API's order)
const order = (a, b) =>
  PRIORITY[a.priority] - PRIORITY[b.priority] ||
  UNACK.has(b.state) - UNACK.has(a.state) ||
  (ms(b.activated_at || b.since) || 0) - (ms(a.activated_at || a.since) || 0) ||
  a.alarm_id.localeCompare(b.alarm_id);

function valueCell(a) {
  const tg = tags.get(tagRefOf(a));
  const v = values.get(tagRefOf(a));
  const unit = tg ? esc(tg.unit) : "";
  let live = "—";
  if (v) {
    if (tg && tg.states && v.value !== null) live = esc(tg.states[String(Math.round(v.value))] ?? fmt(v.value));
    else live = fmt(v.value);
  } else if (a.value !== null && a.value !== undefined) live = fmt(a.value);
  const bad = v && v.quality !== 0 ? " bad" : "";
  const limit = a.limit === null || a.limit === undefined ? "" : ` / ${fmt(a.limit)}`;
  return `<span class="live${bad}" data-testid="live-value">${live}</span> ${unit}<span class="dim">${limit}</span>`;
}

function stateCell(a) {
  let text = t(a.state);
  if (a.state === "shelved" && a.shelved_until_us) {
    const left = (a.shelved_until_us / 1000 - Date.now()) / 1000;
    text += `<br><span class="dim small" title="${esc(fullTime(a.shelved_until))}">${t("until")} ${clock(a.shelved_until)} · ${t("remaining", span(left))}</span>`;
  }
  return text;
}

const conditionKey = (c) => (c.startsWith("state.") ? "STATE" : c.slice(c.indexOf(".") + 1));
// a latched alarm whose condition has cleared (by the live value) waits for an operator's reset
function canReset(a) {
  const tg = tags.get(tagRefOf(a));
  const key = conditionKey(a.condition || "");
  if (!tg || !(tg.latched || []).includes(key) || !a.state.startsWith("active")) return false;
  const v = values.get(tagRefOf(a));
  if (!v || v.value === null || v.quality !== 0 || a.limit === null || a.limit === undefined) return false;
  if (key === "H" || key === "HH") return v.value < a.limit;
  if (key === "L" || key === "LL") return v.value > a.limit;
  if (key === "STATE") return Math.round(v.value) !== Math.round(a.limit);
  return false;
}

function actionButtons(a) {
  if (!ctx.user.may_operate) return "";
  const b = (act, label) => `<button data-act="${act}" data-testid="act-${act}">${t(label)}</button>`;
  const out = [];
  if (UNACK.has(a.state)) out.push(b("ack", "ack"));
  if (canReset(a)) out.push(b("reset", "reset"));
  if (a.state === "shelved") out.push(b("unshelve", "unshelve"));
  else if (a.state === "out_of_service") out.push(b("rts", "rts"));
  else out.push(b("shelve", "shelve"), b("oos", "oos"));
  out.push(b("comment", "comment"));
  return out.join(" ");
}

const activatedCell = (a) => (a.activated_at ? `${clock(a.activated_at)} <span class="dim small">${ago(a.activated_at)}</span>` : "—");

// live values, durations and time left, in place: the rows (and the button under the operator's
// pointer) stay as they are between alarm events
function refreshCells() {
  let redraw = false;
  for (const row of $("alarms").querySelectorAll("tr[data-id]")) {
    const a = alarms.get(row.dataset.id);
    if (!a) continue;
    if (ctx.user.may_operate && canReset(a) !== !!row.querySelector('[data-act="reset"]')) redraw = true;
    const value = row.querySelector('[data-cell="value"]');
    if (value && a.tag) value.innerHTML = valueCell(a);
    row.querySelector('[data-testid="activated"]').innerHTML = activatedCell(a);
    row.querySelector('[data-testid="state"]').innerHTML = stateCell(a);
  }
  if (redraw) render(); // a latched alarm became resettable (or stopped being)
}

function render() {
  const rows = filtered().sort(order);
  const group = $("f-group").checked;
  let html = "";
  let lastInst = null;
  for (const a of rows) {
    const owner = tags.get(ownerOf(a));
    const inst = owner ? equipment.get(owner.equipmentRef)?.installationRef : null;
    if (group && inst !== lastInst) {
      const i = installations.get(inst);
      html += `<tr class="group"><td colspan="8">${esc(i ? placeLabel(i) : "—")}</td></tr>`;
      lastInst = inst;
    }
    const activated = a.activated_at;
    html += `
    <tr class="p-${esc(a.priority)} ${esc(a.state)}${a.alarm_id === selected ? " selected" : ""}" data-id="${esc(a.alarm_id)}" data-testid="alarm-row">
      <td class="op"><input type="checkbox" data-check ${checked.has(a.alarm_id) ? "checked" : ""}></td>
      <td class="prio p-${esc(a.priority)}"><span class="shape">${SHAPE[a.priority] || ""}</span> ${esc(t(a.priority))}</td>
      <td title="${esc(fullTime(activated))}" data-testid="activated">${activatedCell(a)}</td>
      <td class="alarm-name" data-testid="alarm-name"><b>${esc(localOf(ownerOf(a)))}</b> ${esc(a.condition)}${siteBadge(a.site)}<br><span class="dim small">${esc(tagName(ownerOf(a)))}</span></td>
      <td data-cell="value">${a.tag ? valueCell(a) : ""}</td>
      <td class="state" data-testid="state">${stateCell(a)}</td>
      <td class="small" title="${esc(fullTime(a.since))}" data-testid="changed">${clock(a.since)}${a.user ? `<br><span class="dim">${esc(a.user)}</span>` : ""}</td>
      <td class="op actions">${actionButtons(a)}</td>
    </tr>`;
  }
  $("alarms").innerHTML = html;
  $("no-alarms").classList.toggle("hidden", rows.length > 0);
  renderBanner();
  if (selected) renderDetail();
}

function renderBanner() {
  const counts = { critical: 0, high: 0, medium: 0, low: 0 };
  let unack = 0;
  for (const a of alarms.values()) {
    if (a.state === "active_unack" || a.state === "active_ack") counts[a.priority] = (counts[a.priority] || 0) + 1;
    if (UNACK.has(a.state)) unack++;
  }
  $("banner").innerHTML = Object.entries(counts).map(([p, n]) =>
    `<span class="count p-${p}${n ? "" : " zero"}" data-testid="count-${p}"><span class="shape">${SHAPE[p]}</span> ${esc(t(p))} ${n}</span>`,
  ).join("") + `<span class="count${unack ? "" : " zero"}">${t("unacked")} ${unack}</span>`;
}

function renderDetail() {
  const a = alarms.get(selected);
  if (!a) { $("detail").classList.add("hidden"); return; }
  $("detail").classList.remove("hidden");
  $("detail-title").textContent = `${alarmTitle(a)} — ${tagName(ownerOf(a))}`;
  const r = a.response;
  const local = (o) => (o ? (lang === "zh" ? o.zh || o.en : o.en || o.zh) : "");
  const resp = r
    ? `<dl class="response" data-testid="alarm-response">
        <dt>${t("cause")}</dt><dd>${esc(local(r.cause))}</dd>
        <dt>${t("consequence")}</dt><dd>${esc(local(r.consequence))}</dd>
        <dt>${t("action")}</dt><dd>${esc(local(r.action))}</dd>
        ${r.respond_within_min ? `<dt>${t("respond_within")}</dt><dd>${t("minutes", r.respond_within_min)}</dd>` : ""}
      </dl>`
    : `<p class="dim">${t("no_response")}</p>`;
  $("detail-body").innerHTML = `
    <p class="small">${t("col_activated")}: <b>${esc(fullTime(a.activated_at) || "—")}</b><br>
    ${t("col_changed")}: ${esc(fullTime(a.since))}${a.user ? ` · ${t("by")} ${esc(a.user)}` : ""}
    ${a.comment ? `<br>${t("comment")}: ${esc(a.comment)}` : ""}</p>${resp}`;
}

// one event from the stream (or the journal) into the list
function apply(e) {
  logLine(e, true);
  const prev = alarms.get(e.alarm_id);
  if (e.state === "normal") {
    alarms.delete(e.alarm_id);
    return;
  }
  const activation = e.action === "activate" || (prev === undefined && e.prev_state === "normal");
  const next = {
    ...(prev || {}), alarm_id: e.alarm_id, tag: e.tag, site: e.site, condition: e.condition, priority: e.priority,
    state: e.state, value: e.value ?? prev?.value, limit: e.limit ?? prev?.limit, since: e.time, since_us: e.ts_us,
    user: e.user, comment: e.comment ?? prev?.comment,
    // the server says when the alarm became active; an older server: an activation starts it
    activated_at: e.activated_at !== undefined ? e.activated_at : activation ? e.time : prev?.activated_at ?? null,
    shelved_until: e.state === "shelved" ? e.shelved_until ?? prev?.shelved_until : null,
    shelved_until_us: e.state === "shelved" ? e.shelved_until_us ?? prev?.shelved_until_us : null,
  };
  alarms.set(e.alarm_id, next);
  if (e.state === "active_unack" && (e.action === "activate" || e.action === "realarm")) {
    silenced.delete(e.alarm_id);
    if (ctx.user.may_operate) {
      audible.set(e.alarm_id, e.priority);
      tone(e.priority);
      $("silence").classList.remove("hidden");
    }
  }
  if (!next.response && next.tag) loadResponse(next);
}

const logged = []; // newest first, as shown
function logLine(e, live) {
  if (live) logged.unshift(e); else logged.push(e);
  if (logged.length > 300) logged.pop();
  drawLogLine(e, live);
}
function drawLogLine(e, live) {
  const line = document.createElement("div");
  const act = TEXT[lang].actions_of?.[e.action] || e.action;
  line.title = fullTime(e.time);
  line.textContent = `${clock(e.time)}  ${alarmTitle(e)}  ${act}: ${t(e.prev_state)} → ${t(e.state)}` +
    (e.user ? `  (${e.user}${e.comment ? `: ${e.comment}` : ""})` : "");
  if (live) $("log").prepend(line); else $("log").append(line);
  while ($("log").childElementCount > 300) $("log").lastChild.remove();
}

// the journal is read site by site (a token of several sites names one per request), newest first
const newestFirst = (a, b) => b.ts_us - a.ts_us || (b.id ?? 0) - (a.id ?? 0);
async function loadLog() {
  try {
    const pages = await Promise.all(ctx.sites.map((s) =>
      api("GET", `/api/v1/alarms/history?${new URLSearchParams({ limit: 100, site: s.id })}`)));
    $("log").innerHTML = "";
    logged.length = 0;
    for (const e of pages.flatMap((h) => h.events).sort(newestFirst).slice(0, 100)) logLine(e, false);
  } catch (err) {
    // the journal cannot be read now: the log starts with the live events
  }
}

const responses = new Map(); // alarm id -> its response (a site's rules may differ from another's)
async function loadResponse(a) {
  const key = a.alarm_id;
  if (responses.has(key)) { a.response = responses.get(key); return; }
  responses.set(key, null);
  try {
    const r = await api("GET", `/api/v1/console/response/${pathOf(a.alarm_id)}`);
    responses.set(key, r.response);
    const x = alarms.get(key);
    if (x) x.response = r.response;
    if (selected === key) renderDetail();
  } catch { /* no response text: shown as such */ }
}

// ------------------------------------------------------------------ actions
function dialog(title, fields) {
  return new Promise((resolve) => {
    $("dialog-title").textContent = title;
    $("dialog-fields").innerHTML = fields;
    $("dialog-error").textContent = "";
    const d = $("dialog");
    d.returnValue = "";
    d.onclose = () => {
      if (d.returnValue !== "ok") return resolve(null);
      resolve(Object.fromEntries([...d.querySelectorAll("[name]")].map((el) => [el.name, el.value])));
    };
    d.showModal();
    d.querySelector("[name]")?.focus();
  });
}

function shelveChoices() {
  const max = ctx.max_shelve_s || 28800;
  return [[900, "15 min"], [3600, "1 h"], [7200, "2 h"], [14400, "4 h"], [28800, "8 h"]]
    .filter(([s]) => s <= max)
    .map(([s, label], i) => `<option value="${s}"${i === 1 ? " selected" : ""}>${label}</option>`).join("");
}

async function act(id, action) {
  ensureAudio();
  const path = `/api/v1/alarms/${pathOf(id)}`;
  const title = alarms.has(id) ? alarmTitle(alarms.get(id)) : localOf(id);
  try {
    if (action === "ack") {
      await api("POST", `${path}/ack`, {});
    } else if (action === "shelve") {
      const f = await dialog(t("shelve_title", title),
        `<label>${t("duration")} <select name="duration_s" data-testid="shelve-duration">${shelveChoices()}</select></label>
         <label>${t("reason")} <input name="reason" required data-testid="dialog-reason"></label>`);
      if (!f || !f.reason.trim()) return;
      await api("POST", `${path}/shelve`, { reason: f.reason.trim(), duration_s: Number(f.duration_s) });
    } else if (action === "unshelve") {
      await api("POST", `${path}/unshelve`, {});
    } else if (action === "oos") {
      const f = await dialog(t("oos_title", title), `<label>${t("reason")} <input name="reason" required data-testid="dialog-reason"></label>`);
      if (!f || !f.reason.trim()) return;
      await api("POST", `${path}/out-of-service`, { reason: f.reason.trim() });
    } else if (action === "reset") {
      await api("POST", `${path}/reset`, {});
    } else if (action === "rts") {
      await api("POST", `${path}/return-to-service`, {});
    } else if (action === "comment") {
      const f = await dialog(t("comment_title", title), `<label>${t("text")} <input name="text" required data-testid="dialog-text"></label>`);
      if (!f || !f.text.trim()) return;
      await api("POST", `${path}/comment`, { text: f.text.trim() });
    }
  } catch (e) {
    alert(t("failed", t(action), e.message));
  }
}

async function ackSelected() {
  const ids = [...checked].filter((id) => UNACK.has(alarms.get(id)?.state));
  if (!ids.length) return;
  try {
    await api("POST", "/api/v1/alarms/ack", { ids });
    checked.clear();
  } catch (e) {
    alert(t("failed", t("ack"), e.message));
  }
}

// ------------------------------------------------------------------ live stream
function setStatus() {
  $("dot").classList.toggle("up", wsUp);
  const stale = !wsUp || Date.now() - lastUpdate > 15000;
  document.body.classList.toggle("stale", stale && lastUpdate > 0);
  $("stale").classList.toggle("hidden", !(stale && lastUpdate > 0));
  if (stale && lastUpdate > 0) $("stale").textContent = t("stale", span((Date.now() - lastUpdate) / 1000));
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  setStatusText("connecting");
  // the token goes in a first "auth" message, not in the URL (URLs end up in server and proxy logs)
  ws = new WebSocket(`${proto}://${location.host}/api/v1/live`);
  const sock = ws;
  sock.onopen = () => {
    sock.send(JSON.stringify({ type: "auth", token }));
    sock.send(JSON.stringify({ type: "subscribe", sites: ctx.sites.map((s) => s.id) }));
  };
  sock.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    lastUpdate = Date.now();
    if (msg.type === "snapshot") {
      wsUp = true;
      setStatusText("live");
      alarms.clear();
      for (const a of msg.alarms) { alarms.set(a.alarm_id, a); if (a.tag) loadResponse(a); }
      for (const v of msg.values) values.set(tagRefOf(v), v);
      // unacknowledged alarms standing when the page opens (or reconnects) sound too, unless silenced
      for (const a of alarms.values()) if (a.state === "active_unack" && !silenced.has(a.alarm_id)) audible.set(a.alarm_id, a.priority);
      annunciate();
      if (!trend.pens.length) {
        const first = [...alarms.values()].sort(order).find((a) => tags.has(tagRefOf(a)) && tags.get(tagRefOf(a)).kind !== "state");
        if (first) showTrend(tagRefOf(first));
      }
      render();
    } else if (msg.type === "events") {
      for (const e of msg.events) apply(e);
      render();
    } else if (msg.type === "values") {
      dirty = true;
      for (const v of msg.values) {
        const ref = tagRefOf(v);
        values.set(ref, v);
        const d = trend.data.get(ref);
        if (d && v.value !== null) d.push([v.ts_us / 1000, v.value]);
      }
    }
    setStatus();
  };
  sock.onclose = (ev) => {
    wsUp = false;
    setStatus();
    if (ev.code === 4401) {
      sessionStorage.removeItem("hazmon-token");
      setStatusText("token_refused");
      showLogin();
      return;
    }
    setStatusText("reconnecting");
    setTimeout(connect, 2000); // the new snapshot covers what was missed
  };
}

// ------------------------------------------------------------------ trend (SVG)
async function loadPen(ref) {
  const end = Date.now();
  const start = end - trend.range * 1000;
  const bucket = Math.max(1, Math.round(trend.range / 300));
  const q = `start=${new Date(start).toISOString()}&end=${new Date(end).toISOString()}&bucket=${bucket}s&agg=avg`;
  const s = await api("GET", `/api/v1/tags/${pathOf(ref)}/series?${q}`);
  trend.data.set(ref, s.points.filter((p) => p[1] !== null).map((p) => [Date.parse(p[0]), p[1]]));
}

async function showTrend(ref, add) { // ref: the tag's reference, site/tag
  if (!tags.has(ref)) return;
  if (!add) trend.pens = [];
  if (!trend.pens.includes(ref)) trend.pens.push(ref);
  trend.pens = trend.pens.slice(-4);
  await reloadTrend();
}

async function reloadTrend() {
  try {
    await Promise.all(trend.pens.map(loadPen));
  } catch (e) {
    $("trend-title").textContent = e.message;
  }
  drawTrend();
}

function niceStep(span, n) {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
}

function drawTrend() {
  const svg = $("trend");
  const W = 640, H = 300, L = 52, R = 10, T = 10, B = 28;
  const end = Date.now(), start = end - trend.range * 1000;
  const first = tags.get(trend.pens[0]);
  $("trend-title").textContent = first ? `— ${tagLabel(first.ref)} ${nameOf(first)} (${first.unit})` : "";
  $("pens").innerHTML = trend.pens.map((p, i) =>
    `<span style="border-color:${PEN_COLOURS[i]};color:${PEN_COLOURS[i]}" data-testid="pen-label">${esc(tagLabel(p))} ${esc(tags.get(p)?.unit || "")}<b data-remove="${esc(p)}">×</b></span>`).join("");
  const limits = first ? Object.entries(first.limits || {}) : [];
  let lo = Infinity, hi = -Infinity;
  for (const p of trend.pens) for (const [tt, v] of trend.data.get(p) || []) if (tt >= start) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (const [, v] of limits) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!Number.isFinite(lo)) { lo = first?.range?.[0] ?? 0; hi = first?.range?.[1] ?? 1; }
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const x = (tt) => L + ((tt - start) / (end - start)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  let out = `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#b3b7bb"/>`;
  const ys = niceStep(hi - lo, 5);
  for (let v = Math.ceil(lo / ys) * ys; v <= hi; v += ys) {
    out += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#d5d8db"/>` +
      `<text x="${L - 4}" y="${y(v) + 4}" text-anchor="end" font-size="11" fill="#5c646b">${+v.toPrecision(6)}</text>`;
  }
  // time axis in the site's local time
  const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600].map((s) => s * 1000);
  const xs = steps.find((s) => (end - start) / s <= 7) || 21600e3;
  const off = offsetMs(end);
  for (let tt = Math.ceil((start + off) / xs) * xs - off; tt <= end; tt += xs) {
    out += `<line x1="${x(tt)}" x2="${x(tt)}" y1="${T}" y2="${H - B}" stroke="#e0e2e4"/>` +
      `<text x="${x(tt)}" y="${H - B + 14}" text-anchor="middle" font-size="11" fill="#5c646b" data-testid="time-tick">${dtf({ hour: "2-digit", minute: "2-digit" }).format(tt)}</text>`;
  }
  out += `<text x="${W - R}" y="${H - 2}" text-anchor="end" font-size="10" fill="#5c646b">${esc(tz)}</text>`;
  for (const [name, v] of limits) {
    const c = name.length === 2 ? "#d0021b" : "#f08c00";
    out += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="${c}" stroke-dasharray="6 4" data-testid="limit-line"/>` +
      `<text x="${W - R - 2}" y="${y(v) - 3}" text-anchor="end" font-size="11" fill="${c}">${name} ${fmt(v)}</text>`;
  }
  trend.pens.forEach((p, i) => {
    const pts = (trend.data.get(p) || []).filter(([tt]) => tt >= start);
    if (pts.length === 1) {
      out += `<circle cx="${x(pts[0][0]).toFixed(1)}" cy="${y(pts[0][1]).toFixed(1)}" r="3" fill="${PEN_COLOURS[i]}" data-testid="pen"/>`;
    } else if (pts.length) {
      out += `<polyline fill="none" stroke="${PEN_COLOURS[i]}" stroke-width="1.8" points="${pts.map(([tt, v]) => `${x(tt).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}" data-testid="pen"/>`;
    }
  });
  svg.innerHTML = out;
}

// ------------------------------------------------------------------ overview
// communication health of an equipment: bad quality on a tag, or a tag whose data stopped (its
// quality.STALE alarm); quiet tags of a subscription are not stale, so the age of a value is not used
function commOf(refs) {
  let seen = 0, lost = 0;
  const ids = new Set(refs);
  for (const id of refs) {
    const v = values.get(id);
    if (!v) continue;
    seen++;
    if (v.quality !== 0) lost++;
  }
  for (const a of alarms.values()) {
    if (ids.has(tagRefOf(a)) && a.condition === "quality.STALE" && a.state.startsWith("active")) lost++;
  }
  return lost ? "comm_lost" : seen === 0 ? "no_data" : "comm_ok";
}
function shownValue(tg) {
  const v = values.get(tg.ref);
  if (!v || v.value === null) return "—";
  return tg.states ? esc(tg.states[String(Math.round(v.value))] ?? fmt(v.value)) : fmt(v.value);
}

function renderOverview() {
  const worst = new Map();
  for (const a of alarms.values()) {
    if (!(a.state === "active_unack" || a.state === "active_ack" || a.state === "rtn_unack")) continue;
    const eq = tags.get(ownerOf(a))?.equipmentRef;
    if (eq && (!worst.has(eq) || PRIORITY[a.priority] < PRIORITY[worst.get(eq).priority])) worst.set(eq, a);
  }
  let html = "";
  for (const site of ctx.sites) {
    if (multiSite()) html += `<h2 class="site-title" data-testid="site-title">${esc(nameOf(site))}</h2>`;
    for (const inst of site.installations) {
      const eqs = site.equipment.filter((e) => e.installation === inst.id);
      html += `<div class="inst" data-testid="installation" data-site="${esc(site.id)}"><h3>${esc(inst.id)} ${esc(nameOf(inst))}
        <span class="grade" data-testid="grade">${esc(t("grade", inst.grade.level))}</span></h3><div class="equip-grid">`;
      for (const e of eqs) {
        const etags = site.tags.filter((tg) => tg.equipment === e.id);
        const key = [...etags.filter((tg) => tg.kind !== "state"), ...etags.filter((tg) => tg.kind === "state")].slice(0, 5);
        const w = worst.get(refOf(site.id, e.id));
        const comm = commOf(etags.map((tg) => refOf(site.id, tg.id)));
        html += `<div class="equip${w ? ` alarm-${w.priority}` : ""}" data-site="${esc(site.id)}" data-equipment="${esc(e.id)}" data-testid="equipment">
          <div class="name">${esc(e.id)} ${esc(nameOf(e))}</div>
          <div class="vals">${key.map((tg) =>
            `<span title="${esc(tg.id)} ${esc(nameOf(tg))}">${esc(tg.kind === "gas" || tg.kind === "state" ? tg.id.split(".").pop() : t(`kind_${tg.kind}`))}: <b>${shownValue(tags.get(refOf(site.id, tg.id)))}</b> ${esc(tg.unit)}</span>`).join("<br>")}</div>
          ${w ? `<div class="prio p-${esc(w.priority)}"><span class="shape">${SHAPE[w.priority]}</span> ${esc(alarmLabel(w))}</div>` : ""}
          <div class="comm${comm === "comm_lost" ? " lost" : ""}">${t(comm)}</div></div>`;
      }
      html += "</div></div>";
    }
  }
  $("view-overview").innerHTML = html;
}

// ------------------------------------------------------------------ history (the journal)
async function loadHistory() {
  const q = new URLSearchParams({ limit: hist.limit, offset: hist.offset });
  if ($("h-start").value) q.set("start", new Date(fromLocalInput($("h-start").value)).toISOString());
  if ($("h-end").value) q.set("end", new Date(fromLocalInput($("h-end").value)).toISOString());
  if ($("h-tag").value.trim()) q.set("tag", $("h-tag").value.trim());
  if ($("h-prio").value) q.set("priority", $("h-prio").value);
  if ($("h-user").value.trim()) q.set("user", $("h-user").value.trim());
  const site = $("h-site").value || ctx.sites[0]?.id; // a token of several sites names one
  if (site) q.set("site", site);
  try {
    const h = await api("GET", `/api/v1/alarms/history?${q}`);
    hist.next = h.next_offset;
    $("h-rows").innerHTML = h.events.map((e) => `<tr>
      <td title="${esc(fullTime(e.time))}">${clock(e.time, true)}</td>
      <td class="prio p-${esc(e.priority)}"><span class="shape">${SHAPE[e.priority] || ""}</span> ${esc(t(e.priority))}</td>
      <td>${esc(alarmLabel(e))}${siteBadge(e.site)}<br><span class="dim small">${esc(tagName(ownerOf(e)))}</span></td>
      <td>${esc(TEXT[lang].actions_of?.[e.action] || e.action)}</td><td>${esc(t(e.state))}</td>
      <td>${fmt(e.value)}</td><td>${esc(e.user || "")}</td><td>${esc(e.comment || "")}</td></tr>`).join("");
    $("h-page").textContent = t("page", hist.offset / hist.limit + 1);
    $("h-prev").disabled = hist.offset === 0;
    $("h-next").disabled = hist.next === null;
  } catch (e) {
    $("h-rows").innerHTML = `<tr><td colspan="8" class="error">${esc(e.message)}</td></tr>`;
  }
}

// ------------------------------------------------------------------ shift handover report
async function loadHandover() {
  const hours = Math.min(24, Math.max(1, Number($("ho-hours").value) || 12));
  const end = Date.now(), start = end - hours * 3600e3;
  const events = [];
  for (const site of ctx.sites) { // site by site: a token of several sites names one per request
    for (let offset = 0, n = 0; offset !== null && n < 10000;) {
      const q = new URLSearchParams({ start: new Date(start).toISOString(), end: new Date(end).toISOString(), limit: 1000, offset, site: site.id });
      const h = await api("GET", `/api/v1/alarms/history?${q}`);
      events.push(...h.events);
      n += h.events.length;
      offset = h.next_offset;
    }
  }
  events.sort(newestFirst).reverse(); // oldest first
  const list = (rows) => (rows.length
    ? `<table><tbody>${rows.map((a) => `<tr><td class="prio p-${esc(a.priority)}"><span class="shape">${SHAPE[a.priority]}</span> ${esc(t(a.priority))}</td>
        <td>${esc(alarmLabel(a))}${siteBadge(a.site)}</td><td>${esc(tagName(ownerOf(a)))}</td><td>${esc(t(a.state))}</td>
        <td>${esc(clock(a.activated_at || a.since, true))}</td><td>${esc(a.user || "")} ${esc(a.comment || "")}</td></tr>`).join("")}</tbody></table>`
    : `<p class="dim">${t("none")}</p>`);
  const current = [...alarms.values()].sort(order);
  const standing = current.filter((a) => ["active_unack", "active_ack", "rtn_unack"].includes(a.state));
  const shelved = current.filter((a) => a.state === "shelved");
  const oos = current.filter((a) => a.state === "out_of_service");
  const comments = events.filter((e) => e.comment);
  const buckets = new Array(Math.ceil((hours * 3600) / 600)).fill(0);
  const activatedAt = new Map();
  const ackTimes = [];
  for (const e of events) {
    const tt = e.ts_us / 1000;
    if (e.action === "activate") {
      buckets[Math.min(buckets.length - 1, Math.floor((tt - start) / 600e3))]++;
      activatedAt.set(e.alarm_id, tt);
    } else if (e.action === "acknowledge" && activatedAt.has(e.alarm_id)) {
      ackTimes.push((tt - activatedAt.get(e.alarm_id)) / 1000);
      activatedAt.delete(e.alarm_id);
    }
  }
  ackTimes.sort((a, b) => a - b);
  const q = (p) => (ackTimes.length ? span(ackTimes[Math.min(ackTimes.length - 1, Math.floor(p * ackTimes.length))]) : "—");
  const peak = Math.max(1, ...buckets);
  $("ho-body").innerHTML = `
    <h2>${esc(t("ho_title", clock(new Date(start).toISOString(), true), clock(new Date(end).toISOString(), true)))} (${esc(tz)})</h2>
    <h3>${t("ho_standing")} (${standing.length})</h3>${list(standing)}
    <h3>${t("ho_shelved")} (${shelved.length})</h3>${list(shelved)}
    <h3>${t("ho_oos")} (${oos.length})</h3>${list(oos)}
    <h3>${t("ho_rate")}</h3><div class="bars" data-testid="alarm-rate">${buckets.map((n, i) =>
      `<div style="height:${(100 * n) / peak}%" title="${clock(new Date(start + i * 600e3).toISOString())}: ${n}"></div>`).join("")}</div>
    <p class="small dim">${buckets.reduce((a, b) => a + b, 0)} · max ${Math.max(0, ...buckets)} / 10 min</p>
    <h3>${t("ho_ack")}</h3><p>${t("ho_ack_stats", ackTimes.length, q(0.5), q(0.9), ackTimes.length ? span(ackTimes[ackTimes.length - 1]) : "—")}</p>
    <h3>${t("ho_comments")} (${comments.length})</h3>
    ${comments.length ? `<table><tbody>${comments.map((e) => `<tr><td>${clock(e.time, true)}</td><td>${esc(alarmLabel(e))}${siteBadge(e.site)}</td>
      <td>${esc(TEXT[lang].actions_of?.[e.action] || e.action)}</td><td>${esc(e.user || "")}</td><td>${esc(e.comment)}</td></tr>`).join("")}</tbody></table>` : `<p class="dim">${t("none")}</p>`}`;
}

// ------------------------------------------------------------------ page
function translate() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-ph]")) el.placeholder = t(el.dataset.i18nPh);
  $("lang").textContent = lang === "zh" ? "EN" : "中文";
  $("status").textContent = t(statusKey);
  if (!ctx) return;
  $("log").innerHTML = "";
  for (const e of logged) drawLogLine(e, false);
  $("site-name").textContent = ctx.sites.map(nameOf).join(" · ");
  $("who").textContent = `${ctx.user.name} · ${t("role", ctx.user.role)}${ctx.user.may_operate ? "" : ` · ${t("readonly")}`}`;
  const opts = (sel, first, items) => {
    const v = sel.value;
    sel.innerHTML = `<option value="">${esc(first)}</option>` + items.map(([k, label]) => `<option value="${esc(k)}">${esc(label)}</option>`).join("");
    sel.value = v;
  };
  opts($("f-inst"), t("all_inst"), [...installations.values()].map((i) => [i.ref, placeLabel(i)]));
  opts($("f-equip"), t("all_equip"), [...equipment.values()].filter((e) => !$("f-inst").value || e.installationRef === $("f-inst").value).map((e) => [e.ref, placeLabel(e)]));
  opts($("f-prio"), t("all_prio"), Object.keys(PRIORITY).map((p) => [p, t(p)]));
  opts($("h-prio"), t("all_prio"), Object.keys(PRIORITY).map((p) => [p, t(p)]));
  opts($("f-state"), t("all_state"), ["active_unack", "active_ack", "rtn_unack", "shelved", "suppressed", "out_of_service"].map((s) => [s, t(s)]));
  opts($("pen-add"), t("add_pen"), [...tags.values()].filter((tg) => tg.kind !== "state").map((tg) => [tg.ref, `${tagLabel(tg.ref)} ${nameOf(tg)}`]));
  const hSite = $("h-site");
  const chosen = hSite.value;
  hSite.innerHTML = ctx.sites.map((s) => `<option value="${esc(s.id)}">${esc(nameOf(s))}</option>`).join("");
  if (chosen) hSite.value = chosen;
  hSite.classList.toggle("hidden", !multiSite());
  $("ranges").innerHTML = RANGES.map(([label, s]) => `<button data-range="${s}" class="${s === trend.range ? "on" : ""}">${label}</button>`).join(" ");
  render();
  drawTrend();
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const v of document.querySelectorAll(".view")) v.classList.toggle("hidden", v.id !== `view-${name}`);
  if (name === "overview") renderOverview();
  if (name === "history") loadHistory();
  if (name === "handover") loadHandover().catch((e) => { $("ho-body").innerHTML = `<p class="error">${esc(e.message)}</p>`; });
}

function showLogin() {
  $("login").classList.remove("hidden");
  $("console").classList.add("hidden");
  $("tabs").classList.add("hidden");
  $("logout").classList.add("hidden");
}

async function start() {
  try {
    ctx = await api("GET", "/api/v1/console/context");
  } catch (e) {
    if (e.status === 401) sessionStorage.removeItem("hazmon-token");
    $("login-error").textContent = e.message;
    showLogin();
    return;
  }
  sessionStorage.setItem("hazmon-token", token);
  for (const s of ctx.sites) {
    sites.set(s.id, s);
    for (const i of s.installations) installations.set(refOf(s.id, i.id), { ...i, site: s.id, ref: refOf(s.id, i.id) });
    for (const e of s.equipment) {
      equipment.set(refOf(s.id, e.id), { ...e, site: s.id, ref: refOf(s.id, e.id), installationRef: refOf(s.id, e.installation) });
    }
    for (const tg of s.tags) {
      tags.set(refOf(s.id, tg.id), { ...tg, site: s.id, ref: refOf(s.id, tg.id), equipmentRef: refOf(s.id, tg.equipment) });
    }
  }
  const site = ctx.sites[0];
  if (site) tz = site.timezone || tz;
  if (!storedLang && site?.locale) lang = site.locale.toLowerCase().startsWith("zh") ? "zh" : "en"; // the site decides
  document.body.classList.toggle("readonly", !ctx.user.may_operate);
  if (!ctx.user.may_operate) for (const el of document.querySelectorAll(".op")) el.classList.add("hidden");
  $("login").classList.add("hidden");
  $("console").classList.remove("hidden");
  $("tabs").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  const now = Date.now();
  $("h-start").value = toLocalInput(now - 86400e3);
  $("h-end").value = toLocalInput(now + 3600e3);
  translate();
  loadLog();
  connect();
  setInterval(() => { setStatus(); }, 1000);
  // live values at most once a second; durations ("3 min") every 5 s
  let ticks = 0;
  setInterval(() => {
    ticks++;
    if ((dirty || ticks % 5 === 0) && !$("view-alarms").classList.contains("hidden")) { dirty = false; refreshCells(); }
  }, 1000);
  setInterval(drawTrend, 2000);
  setInterval(() => trend.pens.length && reloadTrend(), 60000);
  setInterval(() => { if (!$("view-overview").classList.contains("hidden")) renderOverview(); }, 3000);
  setInterval(annunciate, 5000);
  setInterval(() => { if (ws && ws.readyState === 1) ws.send('{"type":"ping"}'); }, 10000);
}

$("alarms").addEventListener("click", (ev) => {
  const row = ev.target.closest("tr[data-id]");
  if (!row) return;
  ensureAudio();
  const id = row.dataset.id;
  if (ev.target.dataset.act) { act(id, ev.target.dataset.act); return; }
  if (ev.target.dataset.check !== undefined) {
    if (ev.target.checked) checked.add(id); else checked.delete(id);
    return;
  }
  selected = id;
  const a = alarms.get(id);
  const ref = a ? tagRefOf(a) : null;
  if (ref && tags.has(ref) && tags.get(ref).kind !== "state") showTrend(ref, ev.shiftKey);
  render();
});
$("select-all").onchange = (ev) => {
  checked.clear();
  if (ev.target.checked) for (const a of filtered()) if (UNACK.has(a.state)) checked.add(a.alarm_id);
  render();
};
$("ack-selected").onclick = ackSelected;
for (const id of ["f-prio", "f-state", "f-equip", "f-group"]) $(id).onchange = render;
$("f-inst").onchange = () => { $("f-equip").value = ""; translate(); };
$("ranges").addEventListener("click", (ev) => {
  if (!ev.target.dataset.range) return;
  trend.range = Number(ev.target.dataset.range);
  for (const b of $("ranges").children) b.classList.toggle("on", b === ev.target);
  reloadTrend();
});
$("pen-add").onchange = (ev) => { if (ev.target.value) showTrend(ev.target.value, true); ev.target.value = ""; };
$("pens").addEventListener("click", (ev) => {
  const p = ev.target.dataset.remove;
  if (p) { trend.pens = trend.pens.filter((x) => x !== p); drawTrend(); }
});
$("view-overview").addEventListener("click", (ev) => {
  const tile = ev.target.closest("[data-equipment]");
  if (!tile) return;
  const e = equipment.get(refOf(tile.dataset.site, tile.dataset.equipment));
  if (!e) return;
  $("f-inst").value = e.installationRef;
  translate();
  $("f-equip").value = e.ref;
  showTab("alarms");
  render();
  const first = [...tags.values()].find((tg) => tg.equipmentRef === e.ref && tg.kind !== "state");
  if (first) showTrend(first.ref);
});
$("tabs").addEventListener("click", (ev) => { if (ev.target.dataset.tab) showTab(ev.target.dataset.tab); });
$("h-form").onsubmit = (ev) => { ev.preventDefault(); hist.offset = 0; loadHistory(); };
$("h-prev").onclick = () => { hist.offset = Math.max(0, hist.offset - hist.limit); loadHistory(); };
$("h-next").onclick = () => { if (hist.next !== null) { hist.offset = hist.next; loadHistory(); } };
$("ho-run").onclick = () => loadHandover();
$("ho-print").onclick = () => window.print();
$("silence").onclick = () => { // silence does not acknowledge
  for (const id of audible.keys()) silenced.add(id);
  audible.clear();
  $("silence").classList.add("hidden");
};
$("lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("hazmon-lang", lang); fmtCache.clear(); translate(); };
$("go").onclick = () => { token = $("token").value.trim(); ensureAudio(); if (token) start(); };
$("token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("go").click(); });
$("logout").onclick = () => { sessionStorage.removeItem("hazmon-token"); location.search = ""; location.reload(); };
document.addEventListener("click", ensureAudio, { once: true });
translate();
if (token) start(); else showLogin();
