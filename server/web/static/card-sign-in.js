/* Staff-card sign-in on the sign-in page (docs/staff-pages.md, "Signing in"):
   the server's challenge (POST /auth/card/challenge) → the desk's card service signs it with the
   card after its PIN (POST <cardsvc>/v1/card/sign-in) → the server checks the answer
   (POST /auth/card/verify) and opens the session. The card service's address is the section's
   data-cardsvc, or ?cardsvc=... on the page's address. */
"use strict";
(function () {
  const section = document.getElementById("card-sign-in");
  if (!section) return;
  const params = new URLSearchParams(window.location.search);
  const cardsvc = (params.get("cardsvc") || section.dataset.cardsvc).replace(/\/+$/, "");
  const CSRF = document.querySelector("meta[name=csrf-token]")?.content || "";
  const form = document.getElementById("card-form");
  const pin = document.getElementById("card-pin");
  const message = document.getElementById("card-message");
  const button = document.getElementById("card-sign-in-button");

  function say(code) {
    const known = section.querySelector(`#card-messages [data-code="${code}"]`);
    const fallback = section.querySelector('#card-messages [data-code="refused"]');
    message.textContent = (known || fallback).textContent;
    message.className = "error";
    message.dataset.code = code;
  }

  async function toServer(path, body) {
    const response = await fetch(path, {
      method: "POST",
      cache: "no-store",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF },
      body: JSON.stringify(body || {}),
    });
    return { ok: response.ok, body: await response.json().catch(() => ({})) };
  }

  async function toCard(challenge, typed) {
    let response;
    try {
      response = await fetch(`${cardsvc}/v1/card/sign-in`, {
        method: "POST",
        cache: "no-store",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ challenge, pin: typed }),
      });
    } catch (error) {
      return { ok: false, body: { code: "unreachable" } };
    }
    return { ok: response.ok, body: await response.json().catch(() => ({})) };
  }

  async function signIn() {
    const typed = pin.value;
    pin.value = "";
    if (!/^[0-9]{6,8}$/.test(typed)) {
      say("pin_malformed"); // never sent to the card: it would count a try for a typing slip
      return;
    }
    const challenge = await toServer("/auth/card/challenge");
    if (!challenge.ok) return say("refused");
    const card = await toCard(challenge.body.challenge, typed);
    if (!card.ok) return say(card.body.code || "refused");
    const verified = await toServer("/auth/card/verify", {
      challenge: challenge.body.challenge,
      certificate: card.body.certificate,
      signature: card.body.signature,
    });
    if (!verified.ok) return say("refused");
    window.location.assign(verified.body.next || "/");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    button.disabled = true;
    message.textContent = "";
    message.className = "";
    signIn().finally(() => {
      button.disabled = false;
      pin.focus();
    });
  });
  section.hidden = false;
})();
