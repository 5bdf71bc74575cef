/*
 * OneCard station desk (served by server/pages.py at /station; no build step, no libraries).
 *
 * The nurse signs in with a station-staff token and picks the station. The page then watches
 * the local card service on this computer (cardsvc/service.py: GET /v1/status, the SSE stream
 * GET /v1/events). When a card is put on the reader it asks the card service for a tap proof
 * made for this station (kiosk_id = station id, counter = a number that only grows: the time in
 * ms) and posts that proof to the server (POST /staff/v1/exams/eligibility). "Record exam given"
 * taps the card again (the person is present) and posts POST /staff/v1/exams/records.
 *
 * Privacy: the server answers programmes only; the page shows nothing about the person, keeps
 * nothing, and clears the table when the card leaves the reader. The token lives in this tab's
 * sessionStorage only. Everything is written with textContent, never as HTML.
 *
 * Words: every visible string is a message of station-i18n.js (zh-CN and en), shown with
 * I18n.put so that the 中文 / English switch re-renders it; server codes the catalogue does not
 * know show the server's English words.
 */
"use strict";

(() => {
  const DEFAULT_CARDSVC = "http://127.0.0.1:8765";
  const RETRY_MS = 3000;
  const RECORD_RETRIES = [1500, 3000]; // the same request again: same proof, same Idempotency-Key
  const STORE = {
    token: "onecard.station.token", // sessionStorage: gone when the tab closes
    station: "onecard.station.id", // localStorage: a property of this desk
    cardsvc: "onecard.station.cardsvc",
  };

  const I18n = window.OneCardI18n;
  const message = (key, params) => ({ key, params });
  const raw = (words) => ({ fallback: words });

  // Server codes with words of their own; an unknown code shows the server's English words.
  const reasonOf = (code, english) => ({ key: `reason.${code}`, fallback: english ?? code });
  const programmeName = (p) => ({ key: `programme.${p.programme}`, fallback: p.name });
  // server/services/dispensing.py RefusalReason and proof_malformed: the 422s of a tap
  const CARD_REFUSED = new Set([
    "card_unknown", "card_revoked", "proof_invalid", "proof_malformed", "proof_stale",
    "counter_replayed",
  ]);

  // cardsvc/service.py _problem_for codes
  const CARD_UNREADABLE = new Set([
    "card_not_provisioned", "card_malformed", "card_refused", "verification_failed",
  ]);

  // The card service's and the server's failures, and the call that raises them: shared with
  // the staff pages' desk scripts (static/card-service.js, loaded before this one).
  const { Unreachable, Problem, fetchJson } = window.OneCardDesk;

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);

  const state = {
    token: sessionStorage.getItem(STORE.token),
    station: params.get("station") || localStorage.getItem(STORE.station),
    cardsvc: (params.get("cardsvc") || localStorage.getItem(STORE.cardsvc) || DEFAULT_CARDSVC)
      .replace(/\/+$/, ""),
    events: null,
    retryTimer: null,
    ticket: 0, // bumped on every card event: an answer for an older ticket is thrown away
    cardPresent: false,
    lastCounter: 0,
    cookie: false, // signed in through the sign-in page (the session cookie), not a token
  };

  // --- HTTP ---------------------------------------------------------------------------------

  // Signed in on this server's sign-in page (the session cookie) instead of with a token: a
  // state-changing call then carries the page's CSRF token (station.html's meta tag).
  const CSRF = document.querySelector("meta[name=csrf-token]")?.content || "";

  function server(path, { method = "GET", body, key } = {}) {
    const headers = {};
    if (state.token) {
      headers.Authorization = `Bearer ${state.token}`;
    } else if (method !== "GET") {
      headers["X-CSRFToken"] = CSRF;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Idempotency-Key"] = key;
    return fetchJson("server", path, { method, headers, body });
  }

  function randomHex(bytes) {
    const data = crypto.getRandomValues(new Uint8Array(bytes));
    return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function tapProof() {
    const now = Date.now();
    state.lastCounter = Math.max(now, state.lastCounter + 1);
    const answer = await fetchJson("cardsvc", `${state.cardsvc}/v1/card/prove`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        kiosk_id: state.station,
        counter: state.lastCounter,
        time_ms: now,
        nonce: randomHex(16),
      }),
    });
    return answer.proof;
  }

  // --- what the nurse sees ------------------------------------------------------------------

  /** A message (and a smaller detail under it) in the message box; see station-i18n.js. */
  function showMessage(kind, text, detail) {
    const box = $("message");
    box.dataset.kind = kind;
    box.replaceChildren(I18n.put(document.createElement("span"), text));
    if (detail) {
      const small = I18n.put(document.createElement("span"), detail);
      small.className = "detail";
      box.append(small);
    }
  }

  function setStatus(which, good, text) {
    const item = $(`status-${which}`);
    item.dataset.state = good === null ? "idle" : good ? "ok" : "bad";
    I18n.put($(`status-${which}-value`), text);
  }

  function setService(running) {
    document.body.dataset.service = running ? "running" : "down";
    setStatus("service", running, running ? "status.running" : "status.not_running");
  }

  function setReader(ok, name) {
    document.body.dataset.reader = ok ? "ok" : "none";
    setStatus("reader", ok, ok ? (name ? raw(name) : "status.connected") : "status.no_reader");
  }

  function setCard(present) {
    state.cardPresent = present;
    document.body.dataset.card = present ? "present" : "absent";
    setStatus("card", present ? true : null, present ? "status.on_reader" : "status.no_card");
    $("recheck-row").hidden = !present;
  }

  function clearTable() {
    $("programmes").replaceChildren();
    $("eligibility").hidden = true;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text) I18n.put(td, text);
    return td;
  }

  function renderProgrammes(programmes) {
    const rows = programmes.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.programme = p.programme;
      tr.dataset.eligible = String(p.eligible);
      tr.append(cell(programmeName(p), "programme"));
      const now = cell("");
      const badge = I18n.put(document.createElement("span"),
        p.eligible ? "table.eligible" : "table.not_now");
      badge.className = `badge ${p.eligible ? "yes" : "no"}`;
      now.append(badge);
      tr.append(now);
      // The eligibility answer carries a reason code only: an unknown one is shown as it is.
      tr.append(cell(p.eligible || !p.reason ? "" : reasonOf(p.reason), "reason"));
      let next = raw("\u2014");
      if (p.eligible) next = "table.from_now";
      else if (p.next_eligible_on) next = { date: p.next_eligible_on };
      tr.append(cell(next, "next"));
      const action = cell("", "action");
      if (p.eligible) action.append(recordButton(p));
      tr.append(action);
      return tr;
    });
    $("programmes").replaceChildren(...rows);
    $("eligibility").hidden = false;
  }

  function recordButton(programme) {
    const button = I18n.put(document.createElement("button"), "record.button");
    button.type = "button";
    button.className = "record";
    button.addEventListener("click", () => {
      const confirm = I18n.put(document.createElement("button"), "record.confirm");
      confirm.type = "button";
      confirm.className = "confirm";
      const cancel = I18n.put(document.createElement("button"), "record.cancel");
      cancel.type = "button";
      cancel.className = "quiet cancel";
      cancel.addEventListener("click", () => {
        I18n.refresh(button); // the language may have changed while it was away
        button.parentElement.replaceChildren(button);
      });
      confirm.addEventListener("click", () => recordExam(programme));
      button.parentElement.replaceChildren(confirm, cancel);
      confirm.focus();
    });
    return button;
  }

  function disableActions() {
    for (const button of $("eligibility").querySelectorAll("button")) button.disabled = true;
    $("recheck").disabled = true;
  }

  function cardServiceDown() {
    setService(false);
    document.body.dataset.reader = "unknown";
    setStatus("reader", null, raw("\u2014"));
    setCard(false);
    state.ticket += 1;
    clearTable();
    showMessage(
      "error",
      state.cardsvc === DEFAULT_CARDSVC
        ? "msg.service_down"
        : message("msg.service_down_at", { url: state.cardsvc }),
      "msg.service_down.detail",
    );
    const command = document.createElement("code");
    command.className = "command";
    const port = new URL(state.cardsvc).port;
    command.textContent = `onecard cardsvc serve --allow-origin ${window.location.origin}` +
      (port && port !== new URL(DEFAULT_CARDSVC).port ? ` --port ${port}` : "");
    const note = I18n.put(document.createElement("span"), "msg.service_down.origin");
    note.className = "detail";
    $("message").append(command, note);
  }

  /** `detail`: what the card service said (its words), or a message. */
  function readerMissing(detail) {
    setReader(false);
    setCard(false);
    state.ticket += 1;
    clearTable();
    const technical = detail && typeof detail === "string" ? raw(detail) : detail || null;
    showMessage("error", "msg.no_reader", technical
      ? message("msg.no_reader.technical", { detail: technical })
      : "msg.no_reader.detail");
  }

  /** An error as words for the nurse; returns false when the page had to leave the desk. */
  /** An error as words for the nurse; returns false when the page had to leave the desk.
   * `outcome`: the message that says what became of the nurse's action. */
  function explain(error, outcome) {
    if (error instanceof Unreachable && error.where === "cardsvc") {
      cardServiceDown();
      scheduleReconnect();
    } else if (error instanceof Unreachable) {
      showMessage("error", "msg.server_unreachable",
        message("msg.server_unreachable.detail", { outcome }));
    } else if (error instanceof Problem && error.where === "cardsvc") {
      if (error.code === "no_card") {
        showMessage("warn", "msg.no_card", "msg.no_card.detail");
      } else if (error.code === "card_removed") {
        showMessage("warn", "msg.removed_while_reading", "msg.removed_while_reading.detail");
      } else if (error.code === "no_reader" || error.code === "pcscd_unavailable") {
        readerMissing(error.message);
      } else if (CARD_UNREADABLE.has(error.code)) {
        setStatus("card", false, "status.refused");
        showMessage("error", "msg.card_unreadable", "msg.card_unreadable.detail");
      } else {
        showMessage("error", "msg.cardsvc_failed", raw(error.message));
      }
    } else if (error instanceof Problem && error.status === 401) {
      signOut("msg.session_expired");
      return false;
    } else if (error instanceof Problem && CARD_REFUSED.has(error.code)) {
      if (error.code !== "counter_replayed") setStatus("card", false, "status.refused");
      showMessage("error", { key: `refused.${error.code}`, fallback: error.message },
        `refused.${error.code}.detail`);
    } else if (error instanceof Problem && error.code === "card_ca_not_configured") {
      showMessage("error", "msg.ca_missing", "msg.ca_missing.detail");
    } else if (error instanceof Problem) {
      showMessage("error", "msg.server_refused",
        { key: `problem.${error.code}`, fallback: error.message });
    } else {
      showMessage("error", "msg.page_failed", raw(String(error)));
    }
    return true;
  }

  // --- the card on the reader ---------------------------------------------------------------

  async function checkEligibility(after) {
    if (!state.cardPresent) return;
    const ticket = ++state.ticket;
    disableActions();
    if (!after) showMessage("info", "msg.reading");
    try {
      const proof = await tapProof();
      const answer = await server("/staff/v1/exams/eligibility", {
        method: "POST",
        body: JSON.stringify({ station_id: state.station, proof }),
      });
      if (ticket !== state.ticket) return;
      renderProgrammes(answer.programmes);
      if (after) {
        showMessage(...after);
      } else {
        const open = answer.programmes.filter((p) => p.eligible).length;
        if (open > 0) {
          showMessage("ok",
            open === 1 ? "msg.accepted_one" : message("msg.accepted_many", { count: open }),
            "msg.accepted.detail");
        } else {
          showMessage("warn", "msg.accepted_none", "msg.accepted_none.detail");
        }
      }
    } catch (error) {
      if (ticket !== state.ticket) return;
      clearTable();
      explain(error, "msg.nothing_recorded");
    } finally {
      if (ticket === state.ticket) $("recheck").disabled = false;
    }
  }

  async function recordExam(programme) {
    if (!state.cardPresent) return;
    const ticket = ++state.ticket;
    disableActions();
    showMessage("info", message("msg.recording", { programme: programmeName(programme) }));
    let request;
    try {
      const proof = await tapProof();
      request = {
        method: "POST",
        key: randomHex(16),
        body: JSON.stringify({ station_id: state.station, programme: programme.programme, proof }),
      };
    } catch (error) {
      if (ticket !== state.ticket) return;
      clearTable();
      if (explain(error, "msg.nothing_recorded")) $("recheck").disabled = false;
      return;
    }
    for (let attempt = 0; ; attempt += 1) {
      try {
        const answer = await server("/staff/v1/exams/records", request);
        if (ticket !== state.ticket) return;
        await checkEligibility(["ok", message("msg.recorded",
          { programme: programmeName(programme), date: { date: answer.given_on } }),
        "msg.recorded.detail"]);
        return;
      } catch (error) {
        if (ticket !== state.ticket) return;
        if (error instanceof Unreachable && attempt < RECORD_RETRIES.length) {
          showMessage("warn", "msg.retrying");
          await new Promise((resolve) => setTimeout(resolve, RECORD_RETRIES[attempt]));
          if (ticket !== state.ticket) return;
          continue;
        }
        if (error instanceof Problem && error.code === "not_eligible") {
          await checkEligibility(["warn",
            message("msg.not_recorded", { programme: programmeName(programme) }),
            reasonOf(error.body.reason, error.message)]);
        } else {
          clearTable(); // what the table said may be out of date now: check again
          if (explain(error, "msg.maybe_not_recorded")) {
            $("recheck").disabled = false;
          }
        }
        return;
      }
    }
  }

  // --- the card service ---------------------------------------------------------------------

  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connectCardService, RETRY_MS);
  }

  function closeEvents() {
    if (state.events) state.events.close();
    state.events = null;
  }

  async function connectCardService() {
    clearTimeout(state.retryTimer);
    closeEvents();
    let status;
    try {
      status = await fetchJson("cardsvc", `${state.cardsvc}/v1/status`);
    } catch (error) {
      if (error instanceof Problem) {
        setService(true);
        readerMissing(error.message);
      } else {
        cardServiceDown();
      }
      scheduleReconnect();
      return;
    }
    setService(true);
    const wanted = status.reader;
    const readers = status.readers || [];
    const found = wanted ? readers.find((r) => r.startsWith(wanted)) : readers[0];
    if (found) {
      setReader(true, found);
    } else {
      readerMissing(wanted ? message("msg.reader_not_connected", { reader: wanted }) : null);
    }
    const events = new EventSource(`${state.cardsvc}/v1/events`);
    state.events = events;
    events.addEventListener("inserted", (event) => {
      const data = JSON.parse(event.data);
      setReader(true, data.reader || found);
      setCard(true);
      checkEligibility();
    });
    events.addEventListener("removed", (event) => {
      const data = JSON.parse(event.data);
      const hadCard = state.cardPresent || !$("eligibility").hidden;
      if (data.reader) setReader(true, data.reader);
      setCard(false);
      state.ticket += 1;
      clearTable();
      if (hadCard && !data.initial) {
        showMessage("info", "msg.card_removed", "msg.card_removed.detail");
      } else if (document.body.dataset.reader === "ok") {
        showMessage("info", "msg.put_card", "msg.put_card.detail");
      }
    });
    events.addEventListener("reader_unavailable", (event) => {
      readerMissing(JSON.parse(event.data).detail);
    });
    events.onerror = () => {
      if (state.events !== events) return;
      closeEvents();
      cardServiceDown();
      scheduleReconnect();
    };
  }

  // --- signing in ---------------------------------------------------------------------------

  function showSignin(said) {
    document.body.dataset.view = "signin";
    $("desk").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    const box = $("signin-message");
    box.hidden = !said;
    I18n.put(box, said || raw(""));
  }

  /** `said`: a message for the sign-in form, or nothing. */
  function signOut(said) {
    if (state.cookie) {
      // End the server-side session too, then the sign-in page says so.
      fetch("/sign-out", { method: "POST", headers: { "X-CSRFToken": CSRF } })
        .finally(() => window.location.assign("/sign-in"));
      return;
    }
    sessionStorage.removeItem(STORE.token);
    state.token = null;
    clearTimeout(state.retryTimer);
    closeEvents();
    state.ticket += 1;
    setCard(false);
    clearTable();
    $("station-form").hidden = true;
    $("token").value = "";
    showSignin(said);
  }

  function openDesk(station, me) {
    state.station = station;
    localStorage.setItem(STORE.station, station);
    document.body.dataset.view = "desk";
    $("signin").hidden = true;
    $("desk").hidden = false;
    $("who").hidden = false;
    I18n.put($("who-station"), message("who.station", { station }));
    I18n.put($("who-user"), message("who.user", { name: me.name }));
    showMessage("info", "msg.connecting");
    connectCardService();
  }

  /** `token`: a staff token typed in, or null to use the session of this server's sign-in. */
  async function signIn(token) {
    state.token = token;
    let me;
    try {
      me = await server("/staff/v1/me");
    } catch (error) {
      state.token = null;
      sessionStorage.removeItem(STORE.token);
      if (token === null && error.status === 401) {
        showSignin(); // not signed in on this server: the token form, or the sign-in page
      } else if (error instanceof Unreachable) {
        showSignin("signin.unreachable");
      } else if (error.status === 401) {
        showSignin("signin.token_invalid");
      } else if (error.code === "role_required") {
        showSignin("signin.role_required");
      } else {
        showSignin(message("signin.failed", { detail: raw(error.message) }));
      }
      return;
    }
    state.cookie = token === null;
    if (token !== null) sessionStorage.setItem(STORE.token, token);
    if (me.stations.length === 0) {
      showSignin("signin.no_station");
      return;
    }
    if (me.stations.includes(state.station)) {
      openDesk(state.station, me);
      return;
    }
    if (me.stations.length === 1) {
      openDesk(me.stations[0], me);
      return;
    }
    const select = $("station");
    select.replaceChildren(...me.stations.map((id) => new Option(id, id)));
    $("signin-form").hidden = true;
    $("station-form").hidden = false;
    $("station-form").onsubmit = (event) => {
      event.preventDefault();
      openDesk(select.value, me);
    };
    showSignin();
  }

  function start() {
    $("cardsvc").value = state.cardsvc;
    $("cardsvc").addEventListener("change", () => {
      state.cardsvc = ($("cardsvc").value.trim() || DEFAULT_CARDSVC).replace(/\/+$/, "");
      localStorage.setItem(STORE.cardsvc, state.cardsvc);
    });
    if (params.get("cardsvc")) localStorage.setItem(STORE.cardsvc, state.cardsvc);
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (token) signIn(token);
    });
    $("sign-out").addEventListener("click", () => signOut("signin.signed_out"));
    $("recheck").addEventListener("click", () => checkEligibility());
    window.addEventListener("pagehide", closeEvents);
    signIn(state.token || null);
  }

  start();
})();
