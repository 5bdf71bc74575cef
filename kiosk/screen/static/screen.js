// The kiosk screen: shows the kiosk core's state (server-sent events from /events) and sends the
// person's actions (POST /action). Every word comes from the kiosk (kiosk/screen/render.py) and is
// written with textContent; this script makes no decision and keeps nothing.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let current = null;
  let pin = "";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function post(action) {
    return fetch("/action", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(action),
    }).catch(() => null);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function button(text, action, extra) {
    const b = el("button", Object.assign({ type: "button" }, extra || {}), text);
    b.addEventListener("click", () => post(action));
    return b;
  }

  function renderSteps(doc) {
    const list = $("steps");
    clear(list);
    for (const step of doc.steps || []) {
      list.appendChild(el("li", { dataset: { state: step.state, step: step.name } }, step.text));
    }
  }

  function renderOffers(doc) {
    const list = $("offers");
    clear(list);
    for (const offer of doc.offers || []) {
      const item = el("li", { dataset: { inStock: String(offer.in_stock) } });
      item.appendChild(el("span", { class: "name" }, offer.category_name + " · " + offer.name));
      if (offer.status) item.appendChild(el("span", { class: "status" }, " (" + offer.status + ")"));
      list.appendChild(item);
    }
  }

  function renderCategories(doc) {
    const box = $("categories");
    clear(box);
    for (const category of doc.categories || []) {
      const section = el("section", {
        class: "category",
        "aria-labelledby": "cat-" + category.category,
        dataset: { category: category.category, allowed: String(category.allowed), left: String(category.left) },
      });
      section.appendChild(el("h3", { id: "cat-" + category.category }, category.name));
      section.appendChild(el("p", { class: "status" }, category.status));
      const grid = el("div", { class: "offers" });
      for (const offer of category.offers) {
        const card = el("div", {
          class: "offer",
          dataset: { slot: String(offer.slot), inStock: String(offer.in_stock), mayTake: String(offer.may_take) },
        });
        card.appendChild(el("img", { src: offer.pictogram, alt: "" }));
        card.appendChild(el("span", { class: "name" }, offer.name));
        if (offer.stock) card.appendChild(el("span", { class: "stock" }, offer.stock));
        const take = el("button", { type: "button", class: "take primary", "aria-label": offer.button + ": " + offer.name }, offer.button);
        if (!offer.may_take) take.disabled = true;
        take.addEventListener("click", () => post({ action: "choose", slot: offer.slot }));
        card.appendChild(take);
        grid.appendChild(card);
      }
      section.appendChild(grid);
      box.appendChild(section);
    }
  }

  function renderPinpad(doc) {
    const pad = $("pinpad");
    clear(pad);
    pad.hidden = !doc.pin;
    if (!doc.pin) {
      pin = "";
      return;
    }
    const shown = el("div", { id: "pin-shown", "aria-label": doc.ui.pin_label, role: "status" }, "•".repeat(pin.length));
    pad.appendChild(shown);
    for (const digit of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]) {
      const b = el("button", { type: "button", class: "digit", dataset: { digit: digit } }, digit);
      b.addEventListener("click", () => {
        if (pin.length < 8) pin += digit;
        shown.textContent = "•".repeat(pin.length);
      });
      pad.appendChild(b);
    }
    const clearButton = el("button", { type: "button", id: "pin-clear" }, doc.ui.clear);
    clearButton.addEventListener("click", () => {
      pin = "";
      shown.textContent = "";
    });
    pad.appendChild(clearButton);
    const enter = el("button", { type: "button", id: "pin-enter", class: "primary" }, doc.ui.enter);
    enter.addEventListener("click", () => {
      post({ action: "pin", pin: pin });
      pin = "";
      shown.textContent = "";
    });
    pad.appendChild(enter);
  }

  function renderMaintenance(doc) {
    const box = $("maintenance");
    clear(box);
    const m = doc.maintenance;
    if (!m) return;
    const table = el("table", { id: "slots" });
    const head = el("tr");
    for (const title of m.columns) head.appendChild(el("th", { scope: "col" }, title));
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const slot of m.slots) {
      const row = el("tr", { dataset: { slot: String(slot.slot) } });
      for (const cell of slot.cells) row.appendChild(el("td", {}, cell));
      const actions = el("td");
      for (const action of slot.actions) {
        actions.appendChild(button(action.text, { action: action.action, slot: slot.slot }, { class: "slot-action", dataset: { action: action.action } }));
      }
      row.appendChild(actions);
      body.appendChild(row);
    }
    table.appendChild(body);
    box.appendChild(table);
    for (const line of m.status || []) box.appendChild(el("p", { class: "board-status" }, line));
  }

  function render(doc) {
    current = doc;
    document.documentElement.lang = doc.html_lang;
    document.title = doc.title;
    document.body.dataset.screen = doc.screen;
    document.body.dataset.lang = doc.lang;
    document.body.dataset.seq = String(doc.seq);
    if (doc.seen_ms) document.body.dataset.seenMs = String(doc.seen_ms);
    if (doc.reason) document.body.dataset.reason = doc.reason;
    else delete document.body.dataset.reason;
    $("title").textContent = doc.title;
    $("heading").textContent = doc.heading;
    const lines = $("lines");
    clear(lines);
    for (const line of doc.lines) lines.appendChild(el("p", {}, line));
    renderSteps(doc);
    renderOffers(doc);
    renderCategories(doc);
    renderPinpad(doc);
    renderMaintenance(doc);
    const buttons = $("buttons");
    clear(buttons);
    for (const b of doc.buttons) buttons.appendChild(button(b.text, { action: b.action }, { id: "action-" + b.action }));
    for (const lang of doc.languages) {
      const b = $("lang-" + lang);
      if (b) b.setAttribute("aria-pressed", String(lang === doc.lang));
    }
    $("speech").setAttribute("aria-pressed", String(doc.speech));
    $("speech-text").textContent = doc.speech ? doc.ui.speech_off : doc.ui.speech_on;
    const timer = doc.timer;
    $("timer").textContent = timer ? timer.text : "";
    $("warning").textContent = timer && timer.warn ? timer.warning : "";
    const more = $("more-time");
    more.hidden = !timer;
    more.textContent = doc.ui.more_time;
  }

  function connect() {
    const source = new EventSource("/events");
    source.addEventListener("screen", (event) => render(JSON.parse(event.data)));
    source.onerror = () => {
      document.body.dataset.link = "lost";
    };
    source.onopen = () => {
      document.body.dataset.link = "ok";
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const b of document.querySelectorAll("button[data-language]")) {
      b.addEventListener("click", () => post({ action: "language", language: b.dataset.language }));
    }
    $("speech").addEventListener("click", () => post({ action: "speech", on: !(current && current.speech) }));
    $("more-time").addEventListener("click", () => post({ action: "extend" }));
    connect();
  });
})();
