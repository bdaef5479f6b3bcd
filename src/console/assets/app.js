// sitesync operator console: plain ES2020, no framework. The DOM is built with createElement and
// textContent only: every value from the API (record values above all) is untrusted text.
'use strict';
(() => {
  const API = new URL('../api/v1/', document.baseURI).pathname;
  const REFRESH_MS = 5000;
  const LANG_KEY = 'sitesync.lang';

  const D = {
    en: {
      console: 'sitesync console', site: 'site {0}', federation: 'federation {0}',
      nav_overview: 'Overview', nav_dead: 'Dead letters', nav_parked: 'Parked',
      lang_switch: '中文', lang_switch_title: 'Switch the console to Chinese',
      signin: 'Sign in', signout: 'Sign out', signed_in_as: 'Signed in as {0}', read_only: 'read-only',
      signin_title: 'Sign in to act', operator_name: 'Operator name (for the audit log)', token: 'Operator token',
      signin_note: 'The token is sent once to this site and never stored in the browser.', cancel: 'Cancel',
      updated: 'updated {0}', loading: 'Loading…',
      api_down: 'Cannot reach the sitesync API ({0}). Showing the data from {1}.',
      api_down_nodata: 'Cannot reach the sitesync API ({0}).', dismiss: 'Dismiss',
      overview: 'Overview', ready: 'Ready', ready_ok: 'ready', not_ready: 'not ready',
      capture: 'Capture', apply: 'Apply', running: 'running', stopped: 'stopped', disabled: 'disabled',
      checkpoint: 'Checkpoint GTID', last_commit: 'Last source commit', export_stream: 'Export stream', behind_capture: 'Behind capture', unknown: 'unknown', never: 'never',
      origins: 'Origins', col_origin: 'Origin', col_topic: 'Topic', col_lag_s: 'Lag (s)',
      col_lag_rec: 'Lag (records)', col_last_gtid: 'Last applied GTID', col_last_age: 'Applied record from',
      col_applied: 'Applied since start', no_origins: 'This site applies no origin.',
      chart_rate: 'Applied records per second, last hour', chart_lag: 'Lag in seconds, last hour',
      chart_empty: 'No samples yet.', per_s: '{0}/s', sec: '{0} s',
      dead_letters: 'Dead letters', parked_tx: 'Parked transactions', open_list: 'open the list',
      stopped_entities: 'Stopped entities', none: 'None.', col_entity: 'Entity', col_state: 'State',
      col_since: 'Since', col_reason: 'Reason', verify: 'Verification', col_checked: 'Last pass',
      col_compared: 'Compared', col_diff: 'Differences', col_repaired: 'Repaired',
      no_verify: 'No verification pass yet.', snapshots: 'Snapshot requests', col_id: 'ID',
      col_entities: 'Entities', col_for_site: 'For site', col_status: 'Status', col_progress: 'Progress',
      col_requested: 'Requested', col_message: 'Message', no_snapshots: 'No snapshot requests.',
      rows: '{0} rows', actions: 'Recent operator actions', col_when: 'When', col_operator: 'Operator',
      col_address: 'Address', col_action: 'Action', col_target: 'Target', col_outcome: 'Outcome',
      no_actions: 'No operator actions yet.', n_of: 'the {0} most recent of {1}',
      ago_s: '{0} s ago', ago_m: '{0} min ago', ago_h: '{0} h ago', ago_d: '{0} d ago', just_now: 'just now',
      dur_s: '{0} s', dur_m: '{0} min', dur_h: '{0} h', dur_d: '{0} d',
      dl_intro: 'Records this site could not apply. Each stays here until it is replayed, dropped or re-requested.',
      dl_empty: 'No dead letters: every record received has been applied.', list_cut: 'The oldest {0} of {1} are shown.', col_key: 'Natural key',
      col_first_seen: 'First seen', unreadable_cell: '(unreadable)',
      letter: 'Dead letter {0}', back: '← all dead letters', col_op: 'Operation',
      op_c: 'insert', op_u: 'update', op_d: 'delete', op_r: 'snapshot row',
      col_position: 'Topic / partition / offset', col_tx: 'Transaction', col_source_ts: 'Source commit',
      compare: 'Record and local row', col_column: 'Column', col_before: 'Before (record)',
      col_after: 'After (record)', col_local: 'Local row now',
      diff_legend: '≠ and highlight: the record\u2019s after value differs from the local row.',
      local_missing: 'There is no row with this key in this site\u2019s database.',
      local_error: 'The local row could not be read: {0}', no_record: 'The record could not be read. Its raw value:',
      excluded: 'Never leave the origin, not shown: {0}',
      replay: 'Replay', drop: 'Drop', rerequest: 'Re-request',
      replay_title: 'Apply the record again', drop_title: 'Discard the record: it will not be applied here',
      rerequest_title: 'Ask the origin to republish its current row; the fresh row replaces this letter',
      hint_signin: 'sign in to act',
      hint_readonly: 'The console is read-only: no [console] operator_token is configured for this site.',
      cant_rerequest: 'Re-request is not possible: {0}',
      confirm_drop: 'Drop dead letter {0}? Its record is discarded and will not be applied at this site.',
      working: 'Working…', asking_origin: 'Asking origin {0} to republish the row…',
      letter_gone: 'There is no dead letter {0} (any more).', done: 'Done.',
      parked_intro: 'Transactions held back until what they wait for has arrived.',
      parked_empty: 'No parked transactions.', col_pos: 'Topic / partition / offset', col_row_keys: 'Rows',
      col_waits: 'Waits for', col_age: 'Age', not_found: 'There is no such page.',
    },
    zh: {
      console: 'sitesync 控制台', site: '站点 {0}', federation: '联盟 {0}',
      nav_overview: '概览', nav_dead: '死信', nav_parked: '挂起的事务',
      lang_switch: 'English', lang_switch_title: '将控制台切换为英文',
      signin: '登录', signout: '退出', signed_in_as: '已登录：{0}', read_only: '只读',
      signin_title: '登录后执行操作', operator_name: '操作员姓名（记入审计日志）', token: '操作令牌',
      signin_note: '令牌只发送给本站点一次，不会保存在浏览器中。', cancel: '取消',
      updated: '更新于 {0}', loading: '加载中…',
      api_down: '无法连接 sitesync API（{0}）。当前显示的是 {1} 的数据。',
      api_down_nodata: '无法连接 sitesync API（{0}）。', dismiss: '关闭',
      overview: '概览', ready: '就绪状态', ready_ok: '已就绪', not_ready: '未就绪',
      capture: '变更捕获', apply: '应用', running: '运行中', stopped: '已停止', disabled: '未启用',
      checkpoint: '检查点 GTID', last_commit: '源库最近一次提交', export_stream: '导出流', behind_capture: '落后于捕获', unknown: '未知', never: '从未',
      origins: '来源站点', col_origin: '来源', col_topic: '主题', col_lag_s: '延迟（秒）',
      col_lag_rec: '延迟（记录数）', col_last_gtid: '最近应用的 GTID', col_last_age: '所应用记录的时间',
      col_applied: '启动以来已应用', no_origins: '本站点不应用任何来源站点的数据。',
      chart_rate: '每秒应用的记录数（最近一小时）', chart_lag: '延迟秒数（最近一小时）',
      chart_empty: '暂无采样数据。', per_s: '{0}/秒', sec: '{0} 秒',
      dead_letters: '死信', parked_tx: '挂起的事务', open_list: '查看列表',
      stopped_entities: '已停止的实体', none: '无。', col_entity: '实体', col_state: '状态',
      col_since: '开始时间', col_reason: '原因', verify: '数据校验', col_checked: '最近一次校验',
      col_compared: '已比对', col_diff: '差异', col_repaired: '已修复',
      no_verify: '尚未进行过校验。', snapshots: '快照请求', col_id: '编号',
      col_entities: '实体', col_for_site: '目标站点', col_status: '状态', col_progress: '进度',
      col_requested: '请求时间', col_message: '消息', no_snapshots: '没有快照请求。',
      rows: '{0} 行', actions: '最近的操作记录', col_when: '时间', col_operator: '操作员',
      col_address: '地址', col_action: '操作', col_target: '对象', col_outcome: '结果',
      no_actions: '暂无操作记录。', n_of: '最近 {0} 条，共 {1} 条',
      ago_s: '{0} 秒前', ago_m: '{0} 分钟前', ago_h: '{0} 小时前', ago_d: '{0} 天前', just_now: '刚刚',
      dur_s: '{0} 秒', dur_m: '{0} 分钟', dur_h: '{0} 小时', dur_d: '{0} 天',
      dl_intro: '本站点未能应用的记录。每条死信会一直保留，直到被重放、丢弃或重新请求。',
      dl_empty: '没有死信：收到的记录都已应用。', list_cut: '只显示最早的 {0} 条（共 {1} 条）。', col_key: '自然键',
      col_first_seen: '首次出现', unreadable_cell: '（无法解析）',
      letter: '死信 {0}', back: '← 返回死信列表', col_op: '操作类型',
      op_c: '插入', op_u: '更新', op_d: '删除', op_r: '快照行',
      col_position: '主题 / 分区 / 偏移量', col_tx: '事务', col_source_ts: '源库提交时间',
      compare: '记录与本地行对比', col_column: '列', col_before: '修改前（记录）',
      col_after: '修改后（记录）', col_local: '本地当前行',
      diff_legend: '标有 ≠ 并高亮：记录中修改后的值与本地行不同。',
      local_missing: '本站点数据库中没有该键对应的行。',
      local_error: '无法读取本地行：{0}', no_record: '该记录无法解析，原始内容如下：',
      excluded: '以下列从不离开来源站点，因此不显示：{0}',
      replay: '重放', drop: '丢弃', rerequest: '重新请求',
      replay_title: '重新应用这条记录', drop_title: '舍弃这条记录：它不会在本站点应用',
      rerequest_title: '请来源站点重新发布该行的当前内容；新行到达后替代这条死信',
      hint_signin: '登录后才能操作',
      hint_readonly: '控制台为只读：本站点未配置 [console] operator_token。',
      cant_rerequest: '无法重新请求：{0}',
      confirm_drop: '确定丢弃死信 {0} 吗？其记录将被舍弃，不会在本站点应用。',
      working: '处理中…', asking_origin: '正在请求来源站点 {0} 重新发布该行…',
      letter_gone: '死信 {0} 不存在（可能已被处理）。', done: '完成。',
      parked_intro: '这些事务正在等待其依赖的数据到达，暂缓应用。',
      parked_empty: '没有挂起的事务。', col_pos: '主题 / 分区 / 偏移量', col_row_keys: '行',
      col_waits: '等待条件', col_age: '已等待', not_found: '页面不存在。',
    },
  };

  // ---- language ----
  function initialLang() {
    try { const s = localStorage.getItem(LANG_KEY); if (s === 'en' || s === 'zh') return s; } catch (e) { /* no storage */ }
    const list = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en'];
    for (const l of list) {
      const x = String(l).toLowerCase();
      if (x.startsWith('zh')) return 'zh';
      if (x.startsWith('en')) return 'en';
    }
    return 'en';
  }
  let lang = initialLang();
  const t = (k, ...a) => String(D[lang][k] ?? D.en[k] ?? k).replace(/\{(\d)\}/g, (_, i) => String(a[i]));

  // ---- DOM helpers ----
  const $ = (sel) => document.querySelector(sel);
  function add(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
  }
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'test') e.dataset.test = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    add(e, kids);
    return e;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function sv(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, String(v));
    add(e, kids);
    return e;
  }
  const pill = (cls, text, test) => el('span', { class: 'pill ' + cls, test }, text);
  const table = (heads, rows, test) => el('div', { class: 'tablebox' }, el('table', { test },
    el('thead', null, el('tr', null, heads.map((h) => (Array.isArray(h) ? el('th', { class: h[1] }, h[0]) : el('th', null, h))))),
    el('tbody', null, rows)));
  const kv = (pairs) => el('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [el('dt', null, k), el('dd', null, v)]));

  // ---- formatting ----
  const locale = () => (lang === 'zh' ? 'zh-CN' : 'en-US');
  const p2 = (n) => String(n).padStart(2, '0');
  function fmtTime(ms) {
    if (ms == null) return t('unknown');
    const d = new Date(ms);
    return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  }
  // A server time stamp: with a zone (RFC 3339) shown in local time, else as it comes.
  const stamp = (v) => (typeof v === 'string' && /^\d{4}-\d\d-\d\d[T ][\d:.]+(Z|[+-]\d\d:?\d\d)$/i.test(v)
    && !Number.isNaN(Date.parse(v)) ? fmtTime(Date.parse(v)) : v ?? '—');
  const clock = (d) => `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  const int = (n) => (n == null ? t('unknown') : Number(n).toLocaleString(locale()));
  const dec = (n, f = 1) => (n == null ? t('unknown') : Number(n).toLocaleString(locale(), { maximumFractionDigits: f }));
  function dur(s, pre) {
    s = Math.max(0, Math.round(s));
    if (s < 120) return t(pre + 's', s);
    if (s < 7200) return t(pre + 'm', Math.round(s / 60));
    if (s < 172800) return t(pre + 'h', Math.round(s / 3600));
    return t(pre + 'd', Math.round(s / 86400));
  }
  const nowMs = () => (S.ov && S.ov.now_ms) || Date.now();
  function ago(ms) {
    if (ms == null) return t('unknown');
    const s = (nowMs() - ms) / 1000;
    return s < 1 ? t('just_now') : dur(s, 'ago_');
  }
  const whenAgo = (ms) => (ms == null ? t('unknown') : `${fmtTime(ms)} (${ago(ms)})`);
  function val(v) {
    if (v === undefined) return el('span', { class: 'absent' }, '—');
    if (v === null) return el('span', { class: 'null' }, 'NULL');
    return typeof v === 'string' ? v : JSON.stringify(v);
  }
  const valText = (v) => (v === null ? 'NULL' : typeof v === 'string' ? v : JSON.stringify(v));
  const fmtKey = (k) => (k == null ? t('unreadable_cell')
    : Object.entries(k).map(([c, v]) => `${c}=${valText(v)}`).join(', '));
  const opName = (op) => (op == null ? t('unknown') : D.en['op_' + op] ? `${t('op_' + op)} (${op})` : op);
  function stateOf(enabled, running) {
    if (!enabled) return pill('na', '○ ' + t('disabled'));
    return running ? pill('ok', '✓ ' + t('running')) : pill('fail', '✕ ' + t('stopped'));
  }
  const lagCls = (s) => (s == null ? 'na' : s < 10 ? 'ok' : s < 120 ? 'warn' : 'fail');
  function statusCls(s) {
    const x = String(s || '').toLowerCase();
    if (/fail|error|refus|abort|cancel/.test(x)) return 'fail';
    if (/done|complete|finish|ok|success|applied/.test(x)) return 'ok';
    return 'warn';
  }

  // ---- state ----
  const S = {
    session: null, ov: null, hist: null, letters: null, parked: null,
    detail: null, detailId: null, detailGone: null, err: null, lastOk: null, status: null, busy: false,
  };

  function route() {
    const p = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
    if (!p.length) return { v: 'overview' };
    if (p[0] === 'dead-letters' && p.length === 1) return { v: 'letters' };
    if (p[0] === 'dead-letters' && p.length === 2 && /^\d+$/.test(p[1])) return { v: 'letter', id: p[1] };
    if (p[0] === 'parked' && p.length === 1) return { v: 'parked' };
    return { v: 'notfound' };
  }

  async function api(path, post) {
    const init = { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } };
    if (post) {
      init.method = 'POST';
      init.headers['Content-Type'] = 'application/json';
      if (S.session && S.session.csrf) init.headers['X-CSRF-Token'] = S.session.csrf;
      init.body = JSON.stringify(post === true ? {} : post);
    }
    let res;
    try { res = await fetch(API + path, init); } catch (e) {
      const x = new Error(e && e.message ? e.message : String(e)); x.network = true; throw x;
    }
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const x = new Error(body && body.error ? body.error : `HTTP ${res.status} ${res.statusText}`.trim());
      x.status = res.status; throw x;
    }
    return body;
  }

  let inflight = false;
  async function refresh(force) {
    if (inflight && !force) return;
    inflight = true;
    const r = route();
    const jobs = [api('session').then((v) => { S.session = v; }), api('overview').then((v) => { S.ov = v; })];
    if (r.v === 'overview') jobs.push(api('history').then((v) => { S.hist = v; }));
    if (r.v === 'letters') jobs.push(api('dead-letters').then((v) => { S.letters = v.dead_letters || []; S.lettersTotal = v.total; }));
    if (r.v === 'parked') jobs.push(api('parked').then((v) => { S.parked = v.parked || []; S.parkedTotal = v.total; }));
    if (r.v === 'letter') {
      jobs.push(api('dead-letters/' + r.id).then((v) => { S.detail = v; S.detailId = r.id; S.detailGone = null; },
        (e) => { if (e.status !== 404) throw e; S.detail = null; S.detailId = r.id; S.detailGone = e.message; }));
    }
    const res = await Promise.allSettled(jobs);
    inflight = false;
    const bad = res.find((x) => x.status === 'rejected');
    if (bad) S.err = bad.reason.message || String(bad.reason);
    else { S.err = null; S.lastOk = new Date(); }
    render();
  }

  function setStatus(kind, text, hash) { S.status = { kind, text, hash: hash ?? location.hash }; }

  // ---- rendering ----
  let lastTop = '', lastMain = '', lastStatus = '';
  function render() {
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
    const r = route();
    const ov = S.ov;
    const topKey = JSON.stringify([lang, r.v, S.session, ov && [ov.site, ov.site_name, ov.federation, ov.version, ov.dead_letters, ov.parked]]);
    if (topKey !== lastTop) { lastTop = topKey; renderTop(r); }
    const up = $('[data-test="last-refreshed"]');
    if (up) up.textContent = S.lastOk ? t('updated', clock(S.lastOk)) : t('loading');
    const b = $('#banner');
    b.hidden = !S.err;
    b.textContent = S.err ? (S.lastOk ? t('api_down', S.err, clock(S.lastOk)) : t('api_down_nodata', S.err)) : '';
    const sk = JSON.stringify([lang, S.status]);
    if (sk !== lastStatus) { lastStatus = sk; renderStatus(); }
    const data = { overview: [ov, S.hist], letters: [S.letters], parked: [S.parked],
      letter: [S.detailId, S.detail, S.detailGone, S.busy], notfound: [] }[r.v];
    const acts = S.session && [S.session.signed_in, S.session.actions_enabled];
    const key = JSON.stringify([lang, r, acts, data]);
    if (key !== lastMain) {
      lastMain = key;
      const title = { overview: t('overview'), letters: t('dead_letters'), parked: t('parked_tx'),
        letter: t('letter', r.id), notfound: t('not_found') }[r.v];
      document.title = `${title} · ${(ov && ov.site_name) || t('console')}`;
      $('#main').replaceChildren(...[el('h1', { test: 'page-title' }, title), VIEWS[r.v](r)].flat(Infinity));
    }
  }

  function renderTop(r) {
    const ov = S.ov, s = S.session;
    const nav = (href, test, label, count, cls, on) => el('a', { href, test, class: on ? 'active' : null,
      'aria-current': on ? 'page' : null }, label, count ? el('span', { class: 'badge ' + cls }, count) : null);
    let who = null;
    if (s && s.signed_in) {
      who = [el('span', { test: 'signed-in-as' }, t('signed_in_as', s.operator || '?')),
        el('button', { type: 'button', test: 'signout', onclick: signOut }, t('signout'))];
    } else if (s) {
      who = [s.actions_enabled ? null : el('span', { class: 'pill na', test: 'read-only', title: t('hint_readonly') }, t('read_only')),
        el('button', { type: 'button', test: 'signin-open', onclick: openSignin }, t('signin'))];
    }
    $('#top').replaceChildren(
      el('div', { class: 'brand' }, el('strong', { test: 'site-name' }, (ov && ov.site_name) || t('console')),
        ov ? el('span', { class: 'sub', test: 'site-id' }, [t('site', ov.site), t('federation', ov.federation), 'v' + ov.version].join(' · ')) : null),
      el('nav', { class: 'nav' },
        nav('#/', 'nav-overview', t('nav_overview'), 0, '', r.v === 'overview'),
        nav('#/dead-letters', 'nav-dead-letters', t('nav_dead'), ov && ov.dead_letters, 'fail', r.v === 'letters' || r.v === 'letter'),
        nav('#/parked', 'nav-parked', t('nav_parked'), ov && ov.parked, 'warn', r.v === 'parked')),
      el('div', { class: 'topright' },
        el('span', { class: 'muted', test: 'last-refreshed' }),
        el('button', { type: 'button', test: 'lang-switch', title: t('lang_switch_title'), lang: lang === 'zh' ? 'en' : 'zh-CN', onclick: switchLang }, t('lang_switch')),
        who));
  }

  function renderStatus() {
    const st = S.status;
    $('#status').replaceChildren(st ? el('div', { class: 'status ' + st.kind, test: 'status-message', 'data-kind': st.kind, role: st.kind === 'err' ? 'alert' : 'status' },
      el('span', { class: 'text' }, st.text),
      el('button', { type: 'button', class: 'x', test: 'status-dismiss', title: t('dismiss'), 'aria-label': t('dismiss'), onclick: () => { S.status = null; render(); } })) : '');
  }

  function switchLang() {
    lang = lang === 'zh' ? 'en' : 'zh';
    try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* no storage */ }
    closeDialog();
    lastTop = lastMain = lastStatus = '';
    render();
  }

  // ---- views ----
  const loading = () => el('p', { class: 'muted', test: 'loading' }, t('loading'));

  function viewOverview() {
    const ov = S.ov;
    if (!ov) return loading();
    const c = ov.capture || {}, a = ov.apply || {}, rd = ov.ready || {};
    const cards = el('section', { class: 'cards' },
      el('div', { class: 'card' }, el('h2', null, t('ready')),
        pill(rd.ok ? 'ok' : 'fail', (rd.ok ? '✓ ' : '✕ ') + t(rd.ok ? 'ready_ok' : 'not_ready'), 'overview-ready'),
        rd.why ? el('div', { class: 'why small', test: 'ready-why' }, rd.why) : null),
      el('div', { class: 'card' }, el('h2', null, t('capture')), stateOf(c.enabled, c.running),
        c.enabled ? kv([[t('checkpoint'), el('code', null, c.checkpoint_gtid ?? t('unknown'))],
          [t('last_commit'), whenAgo(c.last_source_commit_ms)]]) : null),
      el('div', { class: 'card' }, el('h2', null, t('apply')), stateOf(a.enabled, a.running)),
      ov.export ? el('div', { class: 'card', test: 'export-card' }, el('h2', null, t('export_stream')), stateOf(true, ov.export.running),
        kv([[t('checkpoint'), el('code', null, ov.export.checkpoint_gtid ?? t('unknown'))],
          [t('last_commit'), whenAgo(ov.export.last_source_commit_ms)],
          [t('behind_capture'), ov.export.behind_capture_seconds == null ? t('unknown') : dec(ov.export.behind_capture_seconds) + ' s']]),
        ov.export.last_error ? el('div', { class: 'why small', test: 'export-error' }, ov.export.last_error.message) : null) : null,
      el('div', { class: 'card' }, el('h2', null, t('dead_letters')),
        el('a', { href: '#/dead-letters', class: 'big ' + (ov.dead_letters ? 't-fail' : 't-ok'), test: 'dead-letter-count' }, int(ov.dead_letters)),
        el('div', { class: 'small' }, el('a', { href: '#/dead-letters' }, t('open_list')))),
      el('div', { class: 'card' }, el('h2', null, t('parked_tx')),
        el('a', { href: '#/parked', class: 'big ' + (ov.parked ? 't-warn' : 't-ok'), test: 'parked-count' }, int(ov.parked)),
        el('div', { class: 'small' }, el('a', { href: '#/parked' }, t('open_list')))));

    const origins = ov.origins || [];
    const oTable = origins.length ? table([t('col_origin'), t('col_topic'), [t('col_lag_s'), 'num'], [t('col_lag_rec'), 'num'],
      t('col_last_gtid'), t('col_last_age'), [t('col_applied'), 'num']], origins.map((o) => el('tr', { test: 'origin-row', 'data-origin': o.origin },
      el('td', null, el('strong', null, o.origin)), el('td', null, el('code', null, o.topic)),
      el('td', { class: 'num' }, pill(lagCls(o.lag_seconds), o.lag_seconds == null ? t('unknown') : dec(o.lag_seconds))),
      el('td', { class: 'num' }, pill(o.lag_records == null ? 'na' : o.lag_records === 0 ? 'ok' : o.lag_records < 1000 ? 'warn' : 'fail', int(o.lag_records))),
      el('td', { class: 'wrap' }, el('code', null, o.last_applied ? o.last_applied.gtid : t('unknown'))),
      el('td', null, o.last_applied ? whenAgo(o.last_applied.source_ts_ms) : t('unknown')),
      el('td', { class: 'num' }, int(o.applied_total)))), 'origins') : el('p', { class: 'empty' }, t('no_origins'));

    const h = S.hist;
    const hOrigins = (h && h.origins) || origins.map((o) => o.origin);
    const charts = el('div', { class: 'grid2 row' },
      el('div', { class: 'panel chart', test: 'chart-rate' }, el('h2', null, t('chart_rate')), chart(h, hOrigins, 'applied_per_second', (v) => t('per_s', dec(v)))),
      el('div', { class: 'panel chart', test: 'chart-lag' }, el('h2', null, t('chart_lag')), chart(h, hOrigins, 'lag_seconds', (v) => t('sec', dec(v)))));

    const stopped = ov.stopped_entities || [];
    const stTable = stopped.length ? table([t('col_entity'), t('col_state'), t('col_since'), t('col_reason')],
      stopped.map((s) => el('tr', { test: 'stopped-row' }, el('td', null, el('strong', null, s.entity)),
        el('td', null, pill(s.state === 'stopped' ? 'fail' : 'warn', s.state)), el('td', null, stamp(s.since)), el('td', { class: 'wrap' }, s.reason))))
      : el('p', { class: 'muted' }, pill('ok', '✓'), ' ', t('none'));

    const ver = ov.verify || [];
    const vTable = ver.length ? table([t('col_origin'), t('col_entity'), t('col_checked'), [t('col_compared'), 'num'], [t('col_diff'), 'num'], [t('col_repaired'), 'num']],
      ver.map((v) => el('tr', { test: 'verify-row' }, el('td', null, v.origin), el('td', null, v.entity),
        el('td', null, v.checked_at_ms == null ? t('never') : whenAgo(v.checked_at_ms)), el('td', { class: 'num' }, int(v.compared)),
        el('td', { class: 'num' }, pill(v.differences ? (v.repaired >= v.differences ? 'warn' : 'fail') : 'ok', (v.differences ? '≠ ' : '✓ ') + int(v.differences))),
        el('td', { class: 'num' }, int(v.repaired))))) : el('p', { class: 'muted' }, t('no_verify'));

    const snaps = ov.snapshots || [];
    const sTable = snaps.length ? table([t('col_id'), t('col_entities'), t('col_for_site'), t('col_status'), t('col_progress'), t('col_requested'), t('col_message')],
      snaps.map((s) => el('tr', { test: 'snapshot-row' }, el('td', null, s.id), el('td', null, s.entities), el('td', null, s.for_site ?? '—'),
        el('td', null, pill(statusCls(s.status), s.status)), el('td', { class: 'nw' }, progress(s)), el('td', null, stamp(s.requested_at)), el('td', { class: 'wrap' }, s.message ?? ''))))
      : el('p', { class: 'muted' }, t('no_snapshots'));

    const acts = (ov.actions || []).slice().sort((x, y) => y.at_ms - x.at_ms);
    const shown = acts.slice(0, 20);
    const aTable = acts.length ? [table([t('col_when'), t('col_operator'), t('col_address'), t('col_action'), t('col_target'), t('col_outcome')],
      shown.map((x) => el('tr', { test: 'action-row' }, el('td', null, whenAgo(x.at_ms)), el('td', null, x.operator ?? '—'), el('td', null, el('code', null, x.address)),
        el('td', null, x.action), el('td', { class: 'wrap' }, x.target), el('td', { class: 'wrap' }, pill(typeof x.ok === 'boolean' ? (x.ok ? 'ok' : 'fail') : statusCls(x.outcome), x.outcome))))),
    acts.length > shown.length ? el('p', { class: 'note' }, t('n_of', shown.length, acts.length)) : null]
      : el('p', { class: 'muted' }, t('no_actions'));

    return el('div', { test: 'overview' }, cards,
      el('section', { class: 'panel' }, el('h2', null, t('origins')), oTable), charts,
      el('div', { class: 'grid2 row' }, el('section', { class: 'panel' }, el('h2', null, t('stopped_entities')), stTable),
        el('section', { class: 'panel' }, el('h2', null, t('verify')), vTable)),
      el('section', { class: 'panel' }, el('h2', null, t('snapshots')), sTable),
      el('section', { class: 'panel' }, el('h2', null, t('actions')), aTable));
  }

  function progress(s) {
    const done = s.rows_done ?? 0, total = s.rows_total;
    const c = statusCls(s.status);
    if (!total) return [el('progress', { max: 1, value: c === 'ok' ? 1 : c === 'fail' ? 0 : null }), t('rows', int(done))];
    const pct = Math.min(100, Math.round((done / total) * 100));
    return [el('progress', { max: total, value: Math.min(done, total) }), `${int(done)} / ${int(total)} (${pct}%)`];
  }

  const COLORS = ['#1f5fbf', '#d9480f', '#2f9e44', '#ae3ec9', '#0c8599', '#e8590c', '#5c7cfa', '#868e96'];
  function chart(h, origins, field, fmt) {
    const samples = (h && h.samples) || [];
    if (!samples.length) return el('p', { class: 'muted' }, t('chart_empty'));
    const W = 600, H = 170, L = 48, R = 8, T = 8, B = 22;
    const tEnd = samples[samples.length - 1].t_ms, tStart = tEnd - 3600 * 1000;
    let max = 0;
    for (const s of samples) for (const o of origins) { const v = s[field] && s[field][o]; if (typeof v === 'number' && v > max) max = v; }
    max = niceMax(max);
    const x = (tm) => L + ((tm - tStart) / (tEnd - tStart)) * (W - L - R);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const g = sv('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': field }, sv('title', null, field));
    for (const f of [0, 0.5, 1]) {
      g.append(sv('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }),
        sv('text', { class: 'axis', x: L - 4, y: y(max * f) + 3, 'text-anchor': 'end' }, dec(max * f, 2)));
    }
    for (const [f, anchor] of [[0, 'start'], [0.5, 'middle'], [1, 'end']]) {
      g.append(sv('text', { class: 'axis', x: L + f * (W - L - R), y: H - 6, 'text-anchor': anchor }, clock(new Date(tStart + f * 3600000)).slice(0, 5)));
    }
    const legend = el('div', { class: 'legend' });
    origins.forEach((o, i) => {
      const color = COLORS[i % COLORS.length];
      let pts = [], last = null;
      const flush = () => { if (pts.length) g.append(sv('polyline', { points: pts.join(' '), fill: 'none', stroke: color, 'stroke-width': 1.6, 'stroke-linejoin': 'round' })); pts = []; };
      for (const s of samples) {
        const v = s[field] && s[field][o];
        if (typeof v !== 'number' || s.t_ms < tStart) { flush(); continue; }
        pts.push(`${x(s.t_ms).toFixed(1)},${y(v).toFixed(1)}`); last = v;
      }
      if (pts.length === 1) g.append(sv('circle', { cx: pts[0].split(',')[0], cy: pts[0].split(',')[1], r: 2, fill: color }));
      flush();
      const sw = el('span', { class: 'sw' }); sw.style.backgroundColor = color;
      legend.append(el('span', null, sw, el('strong', null, o), ' ', last == null ? t('unknown') : fmt(last)));
    });
    return [g, legend];
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v))), m = v / e;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * e;
  }

  // The server lists the oldest 500: say so when there are more.
  function shownOf(shown, total) {
    return typeof total === 'number' && total > shown ? el('p', { class: 'hint', test: 'list-cut' }, t('list_cut', shown, total)) : null;
  }

  function viewLetters() {
    if (!S.letters) return loading();
    if (!S.letters.length) return el('div', { test: 'letters' }, el('p', { class: 'empty', test: 'letters-empty' }, t('dl_empty')));
    return el('div', { test: 'letters' }, el('p', { class: 'muted' }, t('dl_intro')), shownOf(S.letters.length, S.lettersTotal),
      table([t('col_id'), t('col_origin'), t('col_entity'), t('col_key'), t('col_reason'), t('col_first_seen')],
        S.letters.map((l) => {
          const href = '#/dead-letters/' + l.id;
          return el('tr', { class: 'clickable', test: 'letter-row', 'data-id': l.id,
            onclick: (ev) => { if (!ev.target.closest('a') && !String(getSelection())) location.hash = href; } },
          el('td', { class: 'nw' }, el('a', { href, test: 'letter-link' }, l.id)), el('td', null, l.origin ?? '—'), el('td', null, l.entity ?? '—'),
          el('td', { class: 'wrap' }, el('code', null, fmtKey(l.key))), el('td', { class: 'wrap', test: 'letter-reason' }, l.reason), el('td', { class: 'nw' }, stamp(l.first_seen)));
        }), 'letter-list'));
  }

  function viewLetter(r) {
    const back = el('p', null, el('a', { href: '#/dead-letters', test: 'back-to-list' }, t('back')));
    if (S.detailId !== r.id) return [back, loading()];
    if (!S.detail) return [back, el('p', { class: 'empty', test: 'letter-gone' }, t('letter_gone', r.id), ' ', S.detailGone || '')];
    const d = S.detail, l = d.letter || {}, rec = d.record, s = S.session || {};
    const signed = !!s.signed_in, enabled = !!s.actions_enabled;
    const hint = !enabled ? t('hint_readonly') : !signed ? t('hint_signin') : null;
    const rr = d.rerequest || { possible: false, why: null };
    const can = enabled && signed && !S.busy;
    const btn = (kind, cls, ok, title, on) => el('button', { type: 'button', class: cls, test: kind, disabled: !ok, title, onclick: on }, t(kind));
    const actions = el('div', { class: 'actions', test: 'letter-actions' },
      btn('replay', 'primary', can, hint || t('replay_title'), () => act('replay', l)),
      btn('drop', 'danger', can, hint || t('drop_title'), () => confirmBox(t('confirm_drop', l.id), t('drop'), () => act('drop', l))),
      btn('rerequest', '', can && rr.possible, hint || (rr.possible ? t('rerequest_title') : t('cant_rerequest', rr.why || '?')), () => act('rerequest', l)),
      hint ? el('span', { class: 'hint', test: 'action-hint' }, hint) : null,
      !hint && !rr.possible ? el('span', { class: 'hint', test: 'rerequest-why' }, t('cant_rerequest', rr.why || '?')) : null);
    const fields = el('section', { class: 'panel' }, kv([
      [t('col_origin'), l.origin ?? t('unknown')], [t('col_entity'), l.entity ?? t('unknown')],
      [t('col_key'), el('code', null, fmtKey(l.key))], [t('col_op'), opName(l.op ?? (rec && rec.op))],
      [t('col_reason'), el('strong', { class: 't-fail', test: 'detail-reason' }, l.reason)], [t('col_first_seen'), stamp(l.first_seen)],
      [t('col_position'), el('code', null, `${l.topic} / ${l.partition} / ${l.offset}`)],
      rec && rec.transaction != null ? [t('col_tx'), el('code', null, valText(rec.transaction))] : null,
      rec && rec.source_ts_ms != null ? [t('col_source_ts'), whenAgo(rec.source_ts_ms)] : null]));
    const parts = [back, el('div', { test: 'letter-detail', 'data-id': l.id }, actions, fields)];
    const lr = d.local_row || {};
    const local = lr.found ? lr.row || {} : null;
    const notes = [];
    if (lr.error != null) notes.push(el('p', { class: 'note t-fail', test: 'local-error' }, t('local_error', lr.error)));
    else if (!lr.found) notes.push(el('p', { class: 'note', test: 'local-missing' }, t('local_missing')));
    if (rec) {
      const before = rec.before || null, after = rec.after || null;
      const cols = [];
      for (const o of [after, before, local]) for (const c of Object.keys(o || {})) if (!cols.includes(c)) cols.push(c);
      const has = (o, c) => o && Object.prototype.hasOwnProperty.call(o, c);
      const rows = cols.map((c) => {
        const diff = after && local && has(after, c) && valText(after[c]) !== valText(has(local, c) ? local[c] : undefined);
        const cell = (o, hl) => el('td', { class: hl ? 'diff' : null }, el('div', { class: 'v' }, val(has(o, c) ? o[c] : undefined)));
        return el('tr', { test: 'compare-row', 'data-column': c, 'data-differs': diff ? 'true' : 'false' },
          el('th', { scope: 'row' }, c, diff ? el('span', { class: 'mark', title: t('diff_legend') }, '≠') : null),
          cell(before), cell(after, diff), cell(local, diff));
      });
      parts.push(el('section', { class: 'panel compare' }, el('h2', null, t('compare')),
        table([t('col_column'), t('col_before'), t('col_after'), t('col_local')], rows, 'compare'),
        notes, el('p', { class: 'note' }, t('diff_legend'))));
    } else {
      parts.push(el('section', { class: 'panel' }, el('h2', null, t('no_record')),
        el('pre', { class: 'raw', test: 'unreadable' }, String(d.unreadable ?? '').replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, (c) => String.fromCharCode(c === '\u007f' ? 0x2421 : 0x2400 + c.charCodeAt(0)))), notes));
    }
    const ex = d.excluded || [];
    if (ex.length) parts.push(el('p', { class: 'note', test: 'excluded' }, t('excluded', ex.join(', '))));
    return parts;
  }

  async function act(kind, l) {
    S.busy = true;
    setStatus('info', kind === 'rerequest' ? t('asking_origin', l.origin ?? '?') : t('working'));
    render();
    try {
      const res = await api(`dead-letters/${l.id}/${kind}`, true);
      S.busy = false;
      S.detail = null; S.detailId = null;
      if (S.letters) S.letters = S.letters.filter((x) => String(x.id) !== String(l.id));
      setStatus('ok', (res && res.message) || t('done'), '#/dead-letters');
      if (location.hash !== '#/dead-letters') location.hash = '#/dead-letters';
      else refresh(true);
    } catch (e) {
      S.busy = false;
      setStatus('err', e.message);
      if (e.status === 401 || e.status === 403) refresh(true);
      render();
    }
  }

  function viewParked() {
    if (!S.parked) return loading();
    if (!S.parked.length) return el('div', { test: 'parked' }, el('p', { class: 'empty', test: 'parked-empty' }, t('parked_empty')));
    return el('div', { test: 'parked' }, el('p', { class: 'muted' }, t('parked_intro')), shownOf(S.parked.length, S.parkedTotal),
      table([t('col_id'), t('col_origin'), t('col_pos'), t('col_row_keys'), t('col_waits'), [t('col_age'), 'num']],
        S.parked.map((p) => el('tr', { test: 'parked-row', 'data-id': p.id }, el('td', null, p.id), el('td', null, p.origin),
          el('td', { class: 'wrap' }, el('code', null, `${p.topic} / ${p.partition} / ${p.offset}`)), el('td', { class: 'wrap' }, el('code', null, p.row_keys)),
          el('td', { class: 'wrap' }, p.reason), el('td', { class: 'num' }, p.age_seconds == null ? t('unknown') : dur(p.age_seconds, 'dur_')))), 'parked-list'));
  }

  const VIEWS = { overview: viewOverview, letters: viewLetters, letter: viewLetter, parked: viewParked,
    notfound: () => el('p', { class: 'empty' }, el('a', { href: '#/' }, t('nav_overview'))) };

  // ---- dialogs ----
  function closeDialog() { const d = $('#dialog'); d.hidden = true; d.replaceChildren(); }
  function showDialog(node) {
    const d = $('#dialog');
    d.replaceChildren(node); d.hidden = false;
    const f = node.querySelector('input, [data-test="confirm-no"]'); if (f) f.focus();
  }
  function confirmBox(text, yes, onYes) {
    showDialog(el('div', { class: 'modal', role: 'dialog', 'aria-modal': 'true', test: 'confirm' },
      el('p', { test: 'confirm-text' }, text),
      el('div', { class: 'btns' },
        el('button', { type: 'button', test: 'confirm-no', onclick: closeDialog }, t('cancel')),
        el('button', { type: 'button', class: 'danger', test: 'confirm-yes', onclick: () => { closeDialog(); onYes(); } }, yes))));
  }
  function openSignin() {
    let saved = '';
    try { saved = localStorage.getItem('sitesync.operator') || ''; } catch (e) { /* no storage */ }
    const op = el('input', { type: 'text', name: 'operator', test: 'signin-operator', autocomplete: 'username', required: true, maxlength: 64 });
    op.value = saved;
    const tok = el('input', { type: 'password', name: 'token', test: 'signin-token', autocomplete: 'off', required: true });
    const err = el('p', { class: 'err', test: 'signin-error', role: 'alert', hidden: true });
    const submit = el('button', { type: 'submit', class: 'primary', test: 'signin-submit' }, t('signin'));
    const form = el('form', { class: 'modal', test: 'signin-form', role: 'dialog', 'aria-modal': 'true',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const token = tok.value, operator = op.value.trim();
        tok.value = '';
        submit.disabled = true;
        try {
          S.session = await api('session', { token, operator });
          try { localStorage.setItem('sitesync.operator', operator); } catch (e) { /* no storage */ }
          closeDialog();
          render();
        } catch (e) {
          err.textContent = e.status ? e.message : t('api_down_nodata', e.message);
          err.hidden = false; submit.disabled = false; tok.focus();
        }
      } },
    el('h2', null, t('signin_title')),
    el('label', null, t('operator_name'), op), el('label', null, t('token'), tok),
    el('p', { class: 'note' }, t('signin_note')), err,
    el('div', { class: 'btns' }, el('button', { type: 'button', test: 'signin-cancel', onclick: closeDialog }, t('cancel')), submit));
    showDialog(form);
    if (saved) tok.focus();
  }
  async function signOut() {
    try { await api('session/logout', true); } catch (e) { setStatus('err', e.message); }
    refresh(true);
  }

  // ---- start ----
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && !$('#dialog').hidden) closeDialog(); });
  $('#dialog').addEventListener('click', (e) => { if (e.target.id === 'dialog') closeDialog(); });
  window.addEventListener('hashchange', () => {
    if (S.status && S.status.hash !== location.hash && S.status.kind !== 'info') S.status = null;
    closeDialog();
    render();
    refresh(true);
  });
  render();
  refresh(true);
  setInterval(() => refresh(false), REFRESH_MS);
})();
