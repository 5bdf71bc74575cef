/*
 * OneCard station desk: the page's words in Simplified Chinese and English (no build step, no
 * libraries; loaded before station.js and exposed to it as window.OneCardI18n).
 *
 * The language: the nurse's choice (the 中文 / English switch, kept in localStorage), otherwise
 * Chinese when the browser's first preferred language starts with "zh", otherwise English.
 *
 * Every visible string is a key of CATALOGUE, with an entry in each language and the same
 * {placeholders}. An element shows a message through put(element, message); a message is a key
 * (string), {key, params, fallback} or {date: "YYYY-MM-DD"}: `fallback` is shown when the key
 * is not in the catalogue (a server code this page does not know: the server's English words).
 * A param is a string, a
 * number, a DOM node (kept as it is), {date: "YYYY-MM-DD"} (a <time> in the language's format),
 * or a message. Static elements carry data-i18n="key" (their children marked data-i18n-param
 * are the params) and data-i18n-aria-label="key". Switching the language re-renders every
 * element on the page in place, so buttons keep their state. Everything is text, never HTML.
 */
"use strict";

window.OneCardI18n = (() => {
  const LANGUAGES = ["zh-CN", "en"];
  const STORE = "onecard.station.language"; // localStorage: the nurse's choice on this desk

  const CATALOGUE = {
    en: {
      "page.title": "OneCard \u00b7 Station desk",
      "page.brand": "OneCard",
      "page.desk": "\u00b7 Station desk",
      "language.group": "Language",
      "signout": "Sign out",
      "signin.title": "Sign in",
      "signin.token": "Staff token",
      "signin.button": "Sign in",
      "signin.password_link": "Or sign in with your user name and password",
      "signin.hint": "The station-staff token your administrator gave you. It is kept in this " +
        "browser tab only, and forgotten when the tab closes.",
      "station.label": "Station",
      "station.button": "Open the desk",
      "settings.summary": "Desk settings",
      "settings.cardsvc": "Card service on this computer",
      "settings.hint": "Where {command} listens (default {url}).",
      "desk.title": "Card on the reader",
      "status.group": "Desk status",
      "status.service": "Card service",
      "status.reader": "Reader",
      "status.card": "Card",
      "status.connecting": "connecting\u2026",
      "status.running": "running",
      "status.not_running": "not running",
      "status.connected": "connected",
      "status.no_reader": "no reader",
      "status.on_reader": "on the reader",
      "status.no_card": "no card",
      "status.refused": "refused",
      "table.title": "Free exams for the card on the reader",
      "table.programme": "Programme",
      "table.now": "Now",
      "table.why_not": "Why not",
      "table.next": "Next eligible",
      "table.action": "Action",
      "table.eligible": "Eligible",
      "table.not_now": "Not now",
      "table.from_now": "now",
      "recheck": "Check again",
      "privacy": "Programmes only: this page shows nothing about the person and keeps nothing. " +
        "It clears when the card leaves the reader. Exam results are never recorded here.",
      "record.button": "Record exam given",
      "record.confirm": "Confirm: exam given today",
      "record.cancel": "Cancel",
      "who.station": "Station {station}",
      "who.user": "Signed in: {name}",

      // server/services/seeding.py DEMO_PROGRAMMES (another programme shows the server's name)
      "programme.pre_pregnancy": "Free pre-pregnancy exam",
      "programme.reproductive_health_check": "Yearly reproductive-health check",

      // server/exams.py ExamReason
      "reason.inactive": "The holder's record is not active",
      "reason.sex_not_served": "Not offered to this holder",
      "reason.too_young": "Below the programme's age range",
      "reason.too_old": "Above the programme's age range",
      "reason.already_given": "Already given (this exam is given once)",
      "reason.too_soon": "Given recently: the interval has not passed",
      "reason.no_plan": "Only for couples registered as planning a pregnancy",

      // server/services/dispensing.py RefusalReason and proof_malformed: the 422s of a tap
      "refused.card_unknown": "Card refused: this card is not registered with OneCard.",
      "refused.card_unknown.detail":
        "Ask the resident to contact a technician to have a card issued.",
      "refused.card_revoked": "Card refused: this card is no longer valid.",
      "refused.card_revoked.detail": "It was reported lost or replaced by a new card. Do not " +
        "serve with it; the holder can ask for a replacement.",
      "refused.proof_invalid": "Card refused: the card failed the authenticity check.",
      "refused.proof_invalid.detail": "It may be a copy. Do not serve with it.",
      "refused.proof_malformed": "Card refused: the card's answer could not be understood.",
      "refused.proof_malformed.detail":
        "Try again; if it happens again the card may be damaged.",
      "refused.proof_stale": "Card refused: this computer's clock is wrong.",
      "refused.proof_stale.detail": "The tap looks too old or from the future. Correct the " +
        "date and time of this computer.",
      "refused.counter_replayed": "This tap was already used.",
      "refused.counter_replayed.detail": "Press \u201cCheck again\u201d.",

      // other server codes the desk can meet (server/pages.py, server/services/)
      "problem.out_of_scope": "This station is outside your area.",
      "problem.station_unknown": "This station is not registered.",
      "problem.station_disabled": "This station is disabled.",
      "problem.kiosk_mismatch": "The tap was made for another station.",
      "problem.programme_unknown": "This exam programme is not offered.",

      "msg.connecting": "Connecting to the card service\u2026",
      "msg.service_down": "The card service is not running on this computer.",
      "msg.service_down_at":
        "The card service is not running on this computer (looked for it at {url}).",
      "msg.service_down.detail": "This page connects by itself once it runs. Start it with:",
      "msg.service_down.origin":
        "If it is running, it must allow this page's address (--allow-origin).",
      "msg.no_reader": "No card reader is connected to this computer.",
      "msg.no_reader.detail": "Plug in the desk reader; this page notices it by itself. If it " +
        "is plugged in, call the technician.",
      "msg.no_reader.technical": "Plug in the desk reader; this page notices it by itself. If " +
        "it is plugged in, call the technician. (Technical detail: {detail})",
      "msg.reader_not_connected": "The reader \u201c{reader}\u201d is not connected.",
      "msg.server_unreachable": "The OneCard server cannot be reached.",
      "msg.server_unreachable.detail":
        "Check the network connection, then press \u201cCheck again\u201d. {outcome}",
      "msg.nothing_recorded": "Nothing was recorded.",
      "msg.maybe_not_recorded": "The exam may not have been recorded.",
      "msg.no_card": "No card on the reader.",
      "msg.no_card.detail": "Put the resident's card on the reader.",
      "msg.removed_while_reading": "The card was removed while it was being read.",
      "msg.removed_while_reading.detail": "Put it back on the reader.",
      "msg.card_unreadable": "Card refused: this is not a OneCard card, or it is damaged.",
      "msg.card_unreadable.detail":
        "The card could not prove it is genuine. Do not serve with it.",
      "msg.cardsvc_failed": "The card service could not read the card.",
      "msg.ca_missing": "The server is not set up for cards yet.",
      "msg.ca_missing.detail": "Call the technician.",
      "msg.server_refused": "The server refused the request.",
      "msg.page_failed": "Something went wrong on this page.",
      "msg.reading": "Reading the card\u2026",
      "msg.accepted_one": "Card accepted. 1 free exam available now.",
      "msg.accepted_many": "Card accepted. {count} free exams available now.",
      "msg.accepted.detail": "Give the exam, then press \u201cRecord exam given\u201d.",
      "msg.accepted_none": "Card accepted. Not eligible for any free exam today.",
      "msg.accepted_none.detail": "The table says why, and from when.",
      "msg.recording": "Recording: {programme}\u2026",
      "msg.recorded": "Recorded: {programme}, given {date}.",
      "msg.recorded.detail": "Only that the exam was given is recorded \u2014 never its results.",
      "msg.retrying": "The server does not answer; trying again\u2026",
      "msg.not_recorded": "Not recorded: not eligible for {programme} now.",
      "msg.card_removed": "Card removed. The screen was cleared.",
      "msg.card_removed.detail": "Put the next resident's card on the reader.",
      "msg.put_card": "Put the resident's card on the reader.",
      "msg.put_card.detail": "The free exams the card holder may have now will show here.",
      "msg.session_expired": "Your sign-in is no longer valid. Sign in again.",
      "signin.unreachable":
        "The OneCard server cannot be reached. Check the network and try again.",
      "signin.token_invalid": "That token is not valid. Check it and try again.",
      "signin.role_required":
        "This page is for station staff; this token belongs to another role.",
      "signin.failed": "Sign-in failed: {detail}",
      "signin.no_station":
        "No service station is registered in your area. Ask an administrator.",
      "signin.signed_out": "Signed out.",
    },
    "zh-CN": {
      "page.title": "一卡通 · 服务站工作台",
      "page.brand": "一卡通",
      "page.desk": "· 服务站工作台",
      "language.group": "语言",
      "signout": "退出登录",
      "signin.title": "登录",
      "signin.token": "工作人员令牌",
      "signin.button": "登录",
      "signin.password_link": "或用用户名和密码登录",
      "signin.hint": "管理员发给您的服务站工作人员令牌。它只保存在这个浏览器标签页中，" +
        "关闭标签页后即被清除。",
      "station.label": "服务站",
      "station.button": "进入工作台",
      "settings.summary": "工作台设置",
      "settings.cardsvc": "本机的读卡服务",
      "settings.hint": "{command} 的监听地址（默认 {url}）。",
      "desk.title": "读卡器上的卡",
      "status.group": "工作台状态",
      "status.service": "读卡服务",
      "status.reader": "读卡器",
      "status.card": "卡",
      "status.connecting": "正在连接…",
      "status.running": "运行中",
      "status.not_running": "未运行",
      "status.connected": "已连接",
      "status.no_reader": "未连接读卡器",
      "status.on_reader": "已放在读卡器上",
      "status.no_card": "无卡",
      "status.refused": "已拒绝",
      "table.title": "读卡器上这张卡可做的免费检查",
      "table.programme": "检查项目",
      "table.now": "现在",
      "table.why_not": "不能做的原因",
      "table.next": "下次可做日期",
      "table.action": "操作",
      "table.eligible": "可以做",
      "table.not_now": "暂不能做",
      "table.from_now": "现在",
      "recheck": "重新检查",
      "privacy": "只显示检查项目：本页不显示持卡人的任何信息，也不保存任何内容。" +
        "卡离开读卡器后页面即清空。这里从不记录检查结果。",
      "record.button": "记录已做检查",
      "record.confirm": "确认：今天已做此项检查",
      "record.cancel": "取消",
      "who.station": "服务站 {station}",
      "who.user": "已登录：{name}",

      "programme.pre_pregnancy": "免费孕前优生健康检查",
      "programme.reproductive_health_check": "年度生殖健康检查",

      "reason.inactive": "持卡人的档案未启用",
      "reason.sex_not_served": "该项目不面向此持卡人",
      "reason.too_young": "未达到该项目的年龄范围",
      "reason.too_old": "超出该项目的年龄范围",
      "reason.already_given": "已经做过（此项检查只做一次）",
      "reason.too_soon": "近期已做过：间隔期未满",
      "reason.no_plan": "仅限已登记计划怀孕的夫妻",

      "refused.card_unknown": "卡被拒绝：这张卡没有在一卡通登记。",
      "refused.card_unknown.detail": "请居民联系技术人员办卡。",
      "refused.card_revoked": "卡被拒绝：这张卡已失效。",
      "refused.card_revoked.detail": "此卡已挂失或已换新卡。请勿凭此卡提供服务；持卡人可以申请补卡。",
      "refused.proof_invalid": "卡被拒绝：这张卡未通过真伪验证。",
      "refused.proof_invalid.detail": "这可能是一张复制卡。请勿凭此卡提供服务。",
      "refused.proof_malformed": "卡被拒绝：无法识别这张卡的应答。",
      "refused.proof_malformed.detail": "请再试一次；如果再次出现，这张卡可能已损坏。",
      "refused.proof_stale": "卡被拒绝：这台电脑的时钟不正确。",
      "refused.proof_stale.detail": "这次刷卡的时间过早或在未来。请校正这台电脑的日期和时间。",
      "refused.counter_replayed": "这次刷卡已经使用过。",
      "refused.counter_replayed.detail": "请按“重新检查”。",

      "problem.out_of_scope": "该服务站不在您的管辖区域内。",
      "problem.station_unknown": "该服务站没有登记。",
      "problem.station_disabled": "该服务站已停用。",
      "problem.kiosk_mismatch": "这次刷卡是为另一个服务站生成的。",
      "problem.programme_unknown": "没有这个检查项目。",

      "msg.connecting": "正在连接读卡服务…",
      "msg.service_down": "这台电脑上的读卡服务没有运行。",
      "msg.service_down_at": "这台电脑上的读卡服务没有运行（查找地址：{url}）。",
      "msg.service_down.detail": "服务运行后本页会自动连接。启动命令：",
      "msg.service_down.origin": "如果服务已在运行，它必须允许本页的地址（--allow-origin）。",
      "msg.no_reader": "这台电脑没有连接读卡器。",
      "msg.no_reader.detail": "请插上工作台的读卡器，本页会自动识别。如果已经插上，请联系技术人员。",
      "msg.no_reader.technical": "请插上工作台的读卡器，本页会自动识别。如果已经插上，" +
        "请联系技术人员。（技术信息：{detail}）",
      "msg.reader_not_connected": "读卡器“{reader}”没有连接。",
      "msg.server_unreachable": "无法连接一卡通服务器。",
      "msg.server_unreachable.detail": "请检查网络连接，然后按“重新检查”。{outcome}",
      "msg.nothing_recorded": "没有记录任何内容。",
      "msg.maybe_not_recorded": "检查可能没有记录成功。",
      "msg.no_card": "读卡器上没有卡。",
      "msg.no_card.detail": "请把居民的卡放在读卡器上。",
      "msg.removed_while_reading": "读卡时卡被拿走了。",
      "msg.removed_while_reading.detail": "请把卡放回读卡器上。",
      "msg.card_unreadable": "卡被拒绝：这不是一卡通的卡，或者卡已损坏。",
      "msg.card_unreadable.detail": "这张卡无法证明是真卡。请勿凭此卡提供服务。",
      "msg.cardsvc_failed": "读卡服务无法读取这张卡。",
      "msg.ca_missing": "服务器尚未完成卡的设置。",
      "msg.ca_missing.detail": "请联系技术人员。",
      "msg.server_refused": "服务器拒绝了这次请求。",
      "msg.page_failed": "本页出错了。",
      "msg.reading": "正在读卡…",
      "msg.accepted_one": "卡已验证。现在可做 1 项免费检查。",
      "msg.accepted_many": "卡已验证。现在可做 {count} 项免费检查。",
      "msg.accepted.detail": "做完检查后，请按“记录已做检查”。",
      "msg.accepted_none": "卡已验证。今天没有可做的免费检查。",
      "msg.accepted_none.detail": "表格中列出了原因和下次可做的日期。",
      "msg.recording": "正在记录：{programme}…",
      "msg.recorded": "已记录：{programme}，检查日期 {date}。",
      "msg.recorded.detail": "只记录做过检查这件事，从不记录检查结果。",
      "msg.retrying": "服务器没有响应，正在重试…",
      "msg.not_recorded": "未记录：现在不能做{programme}。",
      "msg.card_removed": "卡已拿走，屏幕已清空。",
      "msg.card_removed.detail": "请把下一位居民的卡放在读卡器上。",
      "msg.put_card": "请把居民的卡放在读卡器上。",
      "msg.put_card.detail": "持卡人现在可做的免费检查会显示在这里。",
      "msg.session_expired": "您的登录已失效，请重新登录。",
      "signin.unreachable": "无法连接一卡通服务器。请检查网络后重试。",
      "signin.token_invalid": "令牌无效。请检查后重试。",
      "signin.role_required": "本页供服务站工作人员使用；这个令牌属于其他角色。",
      "signin.failed": "登录失败：{detail}",
      "signin.no_station": "您的区域内没有登记服务站。请联系管理员。",
      "signin.signed_out": "已退出登录。",
    },
  };

  const shown = new WeakMap(); // element → its message, to show it again in another language
  let language = chosen();

  function chosen() {
    let stored = null;
    try {
      stored = localStorage.getItem(STORE);
    } catch (error) {
      stored = null; // storage refused: the browser's language
    }
    if (LANGUAGES.includes(stored)) return stored;
    const preferred = (navigator.languages && navigator.languages[0]) || navigator.language || "";
    return preferred.toLowerCase().startsWith("zh") ? "zh-CN" : "en";
  }

  function has(key) {
    return typeof key === "string" && Object.hasOwn(CATALOGUE[language], key);
  }

  /** "2027-11-16" in the language's long format (2027年11月16日, November 16, 2027). */
  function formatDate(iso) {
    const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(iso));
    if (!match) return String(iso);
    const day = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])));
    // A calendar day (the city's, decided by the server): formatted in UTC so it never shifts.
    return new Intl.DateTimeFormat(language, { dateStyle: "long", timeZone: "UTC" }).format(day);
  }

  function dateElement(iso) {
    const time = document.createElement("time");
    time.dateTime = String(iso);
    time.textContent = formatDate(iso);
    return time;
  }

  function param(value) {
    if (value === undefined || value === null) return [];
    if (typeof Node !== "undefined" && value instanceof Node) return [value];
    if (typeof value === "object" && "date" in value) return [dateElement(value.date)];
    if (typeof value === "object") return parts(value);
    return [String(value)];
  }

  /** A message as a list of strings and nodes, in the current language. */
  function parts(message) {
    const m = typeof message === "string" ? { key: message } : message || {};
    if (m.date !== undefined) return [dateElement(m.date)];
    if (!has(m.key)) {
      return m.fallback === undefined || m.fallback === null ? [] : [String(m.fallback)];
    }
    const out = [];
    CATALOGUE[language][m.key].split(/\{(\w+)\}/).forEach((piece, index) => {
      if (index % 2 === 0) {
        if (piece) out.push(piece);
      } else {
        out.push(...param((m.params || {})[piece]));
      }
    });
    return out;
  }

  /** A message as plain text. */
  function text(message) {
    return parts(message).map((p) => (typeof p === "string" ? p : p.textContent)).join("");
  }

  /** Show `message` in `element` (replacing its content) and keep it for a language switch. */
  function put(element, message) {
    shown.set(element, message);
    element.dataset.i18n = (typeof message === "string" ? message : message && message.key) || "";
    element.replaceChildren(...parts(message));
    return element;
  }

  /** Show again what `element` showed (after it was detached and put back). */
  function refresh(element) {
    if (shown.has(element)) put(element, shown.get(element));
  }

  function staticMessage(element) {
    const params = {};
    for (const child of element.querySelectorAll("[data-i18n-param]")) {
      params[child.dataset.i18nParam] = child;
    }
    return { key: element.dataset.i18n, params };
  }

  function apply() {
    document.documentElement.lang = language;
    for (const element of document.querySelectorAll("[data-i18n]")) {
      put(element, shown.get(element) || staticMessage(element));
    }
    for (const element of document.querySelectorAll("[data-i18n-aria-label]")) {
      element.setAttribute("aria-label", text(element.dataset.i18nAriaLabel));
    }
    for (const button of document.querySelectorAll("button[data-language]")) {
      button.setAttribute("aria-pressed", String(button.dataset.language === language));
    }
  }

  /** Switch to `wanted` ("zh-CN" or "en"), remember it on this desk, and re-render the page. */
  function use(wanted) {
    if (!LANGUAGES.includes(wanted)) return;
    language = wanted;
    try {
      localStorage.setItem(STORE, wanted);
    } catch (error) {
      // storage refused: the choice lasts for this page only
    }
    apply();
  }

  for (const button of document.querySelectorAll("button[data-language]")) {
    button.addEventListener("click", () => use(button.dataset.language));
  }
  apply();

  return Object.freeze({
    get language() {
      return language;
    },
    catalogue: CATALOGUE,
    has,
    text,
    put,
    refresh,
    formatDate,
    use,
  });
})();
