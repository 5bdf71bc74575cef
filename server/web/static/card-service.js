/*
 * What the pages that drive the desk's card service share (static/card-desk.js on a resident's
 * page, static/staff-card-issue.js on a user's staff cards; static/station.js takes its calls
 * and errors): calls to the local card service (cardsvc/service.py, http://127.0.0.1) and to
 * the server's JSON calls (/api/v1, with the staff session cookie and the page's CSRF token),
 * their failures as typed errors, the page's words (the gettext catalogue's, rendered by the
 * server into data-words), what a failure means in those words, the progress list and the new
 * PIN's check. No build step, no libraries: it sets window.OneCardDesk, used by the page's own
 * script loaded after it.
 */
"use strict";

window.OneCardDesk = (() => {
  // The card service or the server did not answer at all.
  class Unreachable extends Error {
    constructor(where) {
      super(`${where} unreachable`);
      this.where = where;
    }
  }

  // An answer with an error status and its problem document.
  class Problem extends Error {
    constructor(where, status, body) {
      super(body.detail || `HTTP ${status}`);
      this.where = where;
      this.status = status;
      this.code = body.code || `http_${status}`;
      this.body = body;
    }
  }

  // A refusal the page decides on itself, with its words.
  class Stop extends Error {
    constructor(key, params = {}) {
      super(key);
      this.key = key;
      this.params = params;
    }
  }

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

  // server(method, path, body): /api/v1 with the session cookie and the page's CSRF token.
  function serverCalls() {
    const csrf = document.querySelector("meta[name=csrf-token]")?.content || "";
    return (method, path, body) => {
      const headers = { "X-CSRFToken": csrf };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      return fetchJson("server", `/api/v1${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    };
  }

  // card(path, body): POST to the card service whose address is in `input` (?cardsvc= sets it).
  function cardCalls(input) {
    const given = new URLSearchParams(window.location.search).get("cardsvc");
    if (given) input.value = given;
    return (path, body = {}) => {
      const base = input.value.trim().replace(/\/+$/, "");
      return fetchJson("cardsvc", `${base}/v1${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    };
  }

  const hex = (b64) =>
    Array.from(atob(b64), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");

  // The card makes its keys (POST /provision/generate with `options`). A run interrupted after
  // the card took its own management key finds the default key refused: the server gives the
  // card's key (POST /cards/<guid>/secrets) and the card tries again with it. Returns the card's
  // answer and the management key it took (null: the default one).
  async function generateKeys(card, server, progress, guid, options = {}) {
    progress.step("step.generate");
    try {
      return { generated: await card("/provision/generate", options), managementKey: null };
    } catch (error) {
      if (!(error instanceof Problem && error.code === "management_key_refused" && guid)) throw error;
      progress.drop(); // not a failure: the card is ours, on a key of its own
      progress.step("step.secrets");
      const keys = await server("POST", `/cards/${guid}/secrets`, { purpose: "provision" });
      const managementKey = { management_key: hex(keys.management_key), management_key_type: "AES128" };
      progress.step("step.generate");
      const generated = await card("/provision/generate", { ...managementKey, ...options });
      return { generated, managementKey };
    }
  }

  // The last step tells the server what is now on the card. If that call fails, the card is
  // written and the server does not know it: a Stop with `key`'s words and the server's detail.
  async function recordOrStop(key, call) {
    try {
      return await call();
    } catch (error) {
      if (error instanceof Unreachable || error instanceof Problem) {
        throw new Stop(key, { detail: error.message });
      }
      throw error;
    }
  }

  // words(key, params): the page's word for `key`, its %(name)s filled in.
  function wordsOf(element) {
    const WORDS = JSON.parse(element.dataset.words || "{}");
    const words = (key, params = {}) =>
      (WORDS[key] || key).replace(/%\((\w+)\)s/g, (_, name) => String(params[name] ?? ""));
    words.has = (key) => key in WORDS;
    return words;
  }

  // A failure in the page's words.
  function explain(words, error) {
    if (error instanceof Stop) return words(error.key, error.params);
    if (error instanceof Unreachable) {
      return words(error.where === "cardsvc" ? "error.cardsvc_unreachable" : "error.server_unreachable");
    }
    if (error instanceof Problem && error.where === "cardsvc") {
      const known = {
        no_card: "error.no_card",
        no_reader: "error.no_reader",
        pcscd_unavailable: "error.no_reader",
        card_removed: "error.card_removed",
        management_key_refused: "error.management_key_refused",
        wrong_pin: "error.wrong_pin",
        pin_blocked: "error.pin_blocked",
      }[error.code];
      return words(known || "error.card", { detail: error.message });
    }
    return words("error.server", { detail: error.message });
  }

  // The progress list (one line per step, data-step and data-state) and the message under it.
  function progress(list, messageBox, words) {
    let current = null;
    return {
      step(key) {
        if (current) current.dataset.state = "done";
        current = document.createElement("li");
        current.dataset.step = key.replace("step.", "");
        current.dataset.state = "running";
        current.textContent = words(key);
        list.append(current);
      },
      drop() { // the running line was no failure (e.g. the card is on a key of its own)
        if (current) current.remove();
        current = null;
      },
      end(state) {
        if (current) current.dataset.state = state;
      },
      reset() {
        list.replaceChildren();
        current = null;
      },
      say(text, tone) {
        messageBox.textContent = text;
        messageBox.className = tone ? `flash ${tone}` : "";
      },
    };
  }

  // The new PIN typed in `input`, 6 to 8 digits, or a Stop with the page's "error.pin".
  function pinFrom(input) {
    const pin = input.value.trim();
    if (!/^[0-9]{6,8}$/.test(pin)) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
      throw new Stop("error.pin");
    }
    input.removeAttribute("aria-invalid");
    return pin;
  }

  return {
    Unreachable,
    Problem,
    Stop,
    fetchJson,
    serverCalls,
    cardCalls,
    hex,
    generateKeys,
    recordOrStop,
    wordsOf,
    explain,
    progress,
    pinFrom,
  };
})();
