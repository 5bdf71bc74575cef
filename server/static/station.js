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

  // server/exams.py ExamReason
  const REASONS = {
    inactive: "The holder's record is not active",
    sex_not_served: "Not offered to this holder",
    too_young: "Below the programme's age range",
    too_old: "Above the programme's age range",
    already_given: "Already given (this exam is given once)",
    too_soon: "Given recently: the interval has not passed",
    no_plan: "Only for couples registered as planning a pregnancy",
  };

  // server/services.py RefusalReason, as the server's 422 codes for a tap
  const CARD_REFUSED = {
    card_unknown: ["Card refused: this card is not registered with OneCard.",
      "Ask the resident to contact a technician to have a card issued."],
    card_revoked: ["Card refused: this card is no longer valid.",
      "It was reported lost or replaced by a new card. Do not serve with it; the holder can ask for a replacement."],
    proof_invalid: ["Card refused: the card failed the authenticity check.",
      "It may be a copy. Do not serve with it."],
    proof_malformed: ["Card refused: the card's answer could not be understood.",
      "Try again; if it happens again the card may be damaged."],
    proof_stale: ["Card refused: this computer's clock is wrong.",
      "The tap looks too old or from the future. Correct the date and time of this computer."],
    counter_replayed: ["This tap was already used.", "Press \u201cCheck again\u201d."],
  };

  // cardsvc/service.py _problem_for codes
  const CARD_UNREADABLE = new Set([
    "card_not_provisioned", "card_malformed", "card_refused", "verification_failed",
  ]);

  class Unreachable extends Error {
    constructor(where) {
      super(`${where} unreachable`);
      this.where = where;
    }
  }

  class Problem extends Error {
    constructor(where, status, body) {
      super(body.detail || `HTTP ${status}`);
      this.where = where;
      this.status = status;
      this.code = body.code || `http_${status}`;
      this.body = body;
    }
  }

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
  };

  // --- HTTP ---------------------------------------------------------------------------------

  async function fetchJson(where, url, options = {}) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store", ...options });
    } catch (error) {
      throw new Unreachable(where);
    }
    let body = {};
    try {
      body = await response.json();
    } catch (error) {
      body = {};
    }
    if (!response.ok) throw new Problem(where, response.status, body);
    return body;
  }

  function server(path, { method = "GET", body, key } = {}) {
    const headers = { Authorization: `Bearer ${state.token}` };
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

  function showMessage(kind, text, detail) {
    const box = $("message");
    box.dataset.kind = kind;
    box.replaceChildren(document.createTextNode(text));
    if (detail) {
      const small = document.createElement("span");
      small.className = "detail";
      small.textContent = detail;
      box.append(small);
    }
  }

  function setStatus(which, good, text) {
    const item = $(`status-${which}`);
    item.dataset.state = good === null ? "idle" : good ? "ok" : "bad";
    $(`status-${which}-value`).textContent = text;
  }

  function setService(running) {
    document.body.dataset.service = running ? "running" : "down";
    setStatus("service", running, running ? "running" : "not running");
  }

  function setReader(ok, name) {
    document.body.dataset.reader = ok ? "ok" : "none";
    setStatus("reader", ok, ok ? name || "connected" : "no reader");
  }

  function setCard(present) {
    state.cardPresent = present;
    document.body.dataset.card = present ? "present" : "absent";
    setStatus("card", present ? true : null, present ? "on the reader" : "no card");
    $("recheck-row").hidden = !present;
  }

  function clearTable() {
    $("programmes").replaceChildren();
    $("eligibility").hidden = true;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function renderProgrammes(programmes) {
    const rows = programmes.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.programme = p.programme;
      tr.dataset.eligible = String(p.eligible);
      tr.append(cell(p.name, "programme"));
      const now = cell("");
      const badge = document.createElement("span");
      badge.className = `badge ${p.eligible ? "yes" : "no"}`;
      badge.textContent = p.eligible ? "Eligible" : "Not now";
      now.append(badge);
      tr.append(now);
      tr.append(cell(p.eligible ? "" : REASONS[p.reason] || p.reason || "", "reason"));
      tr.append(cell(p.eligible ? "now" : p.next_eligible_on || "\u2014", "next"));
      const action = cell("", "action");
      if (p.eligible) action.append(recordButton(p));
      tr.append(action);
      return tr;
    });
    $("programmes").replaceChildren(...rows);
    $("eligibility").hidden = false;
  }

  function recordButton(programme) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "record";
    button.textContent = "Record exam given";
    button.addEventListener("click", () => {
      const confirm = document.createElement("button");
      confirm.type = "button";
      confirm.className = "confirm";
      confirm.textContent = "Confirm: exam given today";
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "quiet cancel";
      cancel.textContent = "Cancel";
      cancel.addEventListener("click", () => button.parentElement.replaceChildren(button));
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
    setStatus("reader", null, "\u2014");
    setCard(false);
    state.ticket += 1;
    clearTable();
    const where = state.cardsvc === DEFAULT_CARDSVC ? "" : ` (looked for it at ${state.cardsvc})`;
    showMessage(
      "error",
      `The card service is not running on this computer${where}.`,
      "This page connects by itself once it runs. Start it with:",
    );
    const command = document.createElement("code");
    command.className = "command";
    const port = new URL(state.cardsvc).port;
    command.textContent = `onecard cardsvc serve --allow-origin ${window.location.origin}` +
      (port && port !== new URL(DEFAULT_CARDSVC).port ? ` --port ${port}` : "");
    const note = document.createElement("span");
    note.className = "detail";
    note.textContent = "If it is running, it must allow this page's address (--allow-origin).";
    $("message").append(command, note);
  }

  function readerMissing(detail) {
    setReader(false);
    setCard(false);
    state.ticket += 1;
    clearTable();
    showMessage("error", "No card reader is connected to this computer.",
      "Plug in the desk reader; this page notices it by itself. If it is plugged in, call the " +
        `technician.${detail ? ` (Technical detail: ${detail})` : ""}`);
  }

  /** An error as words for the nurse; returns false when the page had to leave the desk. */
  function explain(error, doing) {
    if (error instanceof Unreachable && error.where === "cardsvc") {
      cardServiceDown();
      scheduleReconnect();
    } else if (error instanceof Unreachable) {
      showMessage("error", "The OneCard server cannot be reached.",
        `Check the network connection, then press \u201cCheck again\u201d. ${doing}`);
    } else if (error instanceof Problem && error.where === "cardsvc") {
      if (error.code === "no_card") {
        showMessage("warn", "No card on the reader.", "Put the resident's card on the reader.");
      } else if (error.code === "card_removed") {
        showMessage("warn", "The card was removed while it was being read.",
          "Put it back on the reader.");
      } else if (error.code === "no_reader" || error.code === "pcscd_unavailable") {
        readerMissing(error.message);
      } else if (CARD_UNREADABLE.has(error.code)) {
        setStatus("card", false, "refused");
        showMessage("error", "Card refused: this is not a OneCard card, or it is damaged.",
          "The card could not prove it is genuine. Do not serve with it.");
      } else {
        showMessage("error", "The card service could not read the card.", error.message);
      }
    } else if (error instanceof Problem && error.status === 401) {
      signOut("Your sign-in is no longer valid. Sign in again.");
      return false;
    } else if (error instanceof Problem && CARD_REFUSED[error.code]) {
      const [text, detail] = CARD_REFUSED[error.code];
      if (error.code !== "counter_replayed") setStatus("card", false, "refused");
      showMessage("error", text, detail);
    } else if (error instanceof Problem && error.code === "card_ca_not_configured") {
      showMessage("error", "The server is not set up for cards yet.", "Call the technician.");
    } else if (error instanceof Problem) {
      showMessage("error", "The server refused the request.", error.message);
    } else {
      showMessage("error", "Something went wrong on this page.", String(error));
    }
    return true;
  }

  // --- the card on the reader ---------------------------------------------------------------

  async function checkEligibility(after) {
    if (!state.cardPresent) return;
    const ticket = ++state.ticket;
    disableActions();
    if (!after) showMessage("info", "Reading the card\u2026");
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
          showMessage("ok", `Card accepted. ${open} free exam${open === 1 ? "" : "s"} available now.`,
            "Give the exam, then press \u201cRecord exam given\u201d.");
        } else {
          showMessage("warn", "Card accepted. Not eligible for any free exam today.",
            "The table says why, and from when.");
        }
      }
    } catch (error) {
      if (ticket !== state.ticket) return;
      clearTable();
      explain(error, "Nothing was recorded.");
    } finally {
      if (ticket === state.ticket) $("recheck").disabled = false;
    }
  }

  async function recordExam(programme) {
    if (!state.cardPresent) return;
    const ticket = ++state.ticket;
    disableActions();
    showMessage("info", `Recording: ${programme.name}\u2026`);
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
      if (explain(error, "Nothing was recorded.")) $("recheck").disabled = false;
      return;
    }
    for (let attempt = 0; ; attempt += 1) {
      try {
        const answer = await server("/staff/v1/exams/records", request);
        if (ticket !== state.ticket) return;
        await checkEligibility(["ok", `Recorded: ${programme.name}, given ${answer.given_on}.`,
          "Only that the exam was given is recorded \u2014 never its results."]);
        return;
      } catch (error) {
        if (ticket !== state.ticket) return;
        if (error instanceof Unreachable && attempt < RECORD_RETRIES.length) {
          showMessage("warn", "The server does not answer; trying again\u2026");
          await new Promise((resolve) => setTimeout(resolve, RECORD_RETRIES[attempt]));
          if (ticket !== state.ticket) return;
          continue;
        }
        if (error instanceof Problem && error.code === "not_eligible") {
          const reason = REASONS[error.body.reason] || error.body.reason || "";
          await checkEligibility(["warn", `Not recorded: not eligible for ${programme.name} now.`,
            reason]);
        } else {
          clearTable(); // what the table said may be out of date now: check again
          if (explain(error, "The exam may not have been recorded.")) {
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
      readerMissing(wanted ? `The reader \u201c${wanted}\u201d is not connected.` : "");
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
        showMessage("info", "Card removed. The screen was cleared.",
          "Put the next resident's card on the reader.");
      } else if (document.body.dataset.reader === "ok") {
        showMessage("info", "Put the resident's card on the reader.",
          "The free exams the card holder may have now will show here.");
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

  function showSignin(message) {
    document.body.dataset.view = "signin";
    $("desk").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    const box = $("signin-message");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function signOut(message) {
    sessionStorage.removeItem(STORE.token);
    state.token = null;
    clearTimeout(state.retryTimer);
    closeEvents();
    state.ticket += 1;
    setCard(false);
    clearTable();
    $("station-form").hidden = true;
    $("token").value = "";
    showSignin(message);
  }

  function openDesk(station, me) {
    state.station = station;
    localStorage.setItem(STORE.station, station);
    document.body.dataset.view = "desk";
    $("signin").hidden = true;
    $("desk").hidden = false;
    $("who").hidden = false;
    $("who-station").textContent = `Station ${station}`;
    $("who-user").textContent = `Signed in: ${me.name}`;
    showMessage("info", "Connecting to the card service\u2026");
    connectCardService();
  }

  async function signIn(token) {
    state.token = token;
    let me;
    try {
      me = await server("/staff/v1/me");
    } catch (error) {
      state.token = null;
      sessionStorage.removeItem(STORE.token);
      if (error instanceof Unreachable) {
        showSignin("The OneCard server cannot be reached. Check the network and try again.");
      } else if (error.status === 401) {
        showSignin("That token is not valid. Check it and try again.");
      } else if (error.code === "role_required") {
        showSignin("This page is for station staff; this token belongs to another role.");
      } else {
        showSignin(`Sign-in failed: ${error.message}`);
      }
      return;
    }
    sessionStorage.setItem(STORE.token, token);
    if (me.stations.length === 0) {
      showSignin("No service station is registered in your area. Ask an administrator.");
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
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("recheck").addEventListener("click", () => checkEligibility());
    window.addEventListener("pagehide", closeEvents);
    if (state.token) {
      signIn(state.token);
    } else {
      showSignin();
    }
  }

  start();
})();
