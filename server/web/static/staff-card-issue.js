/*
 * Issue a staff card on the desk reader, from a user's staff-card page
 * (server/web/templates/staff/admin_user_cards.html): the steps of
 * `onecard card provision --staff --user NAME` (onecard/card.py), every card operation through
 * the local card service, everything else through /api/v1 with the session cookie and the page's
 * CSRF token (static/card-service.js, shared with the resident's card desk):
 *
 *   identify → (a GUID on the card: GET /staff-cards/<guid>, a card issued to anyone stops here;
 *   its keys from POST /cards/<guid>/secrets when its management key is its own)
 *   → generate {sign_in: true} (the card makes its 9E and its PIN-bound 9A key)
 *   → POST /staff-cards/certificates (both certified by the city CA's staff issuer, the CHUID)
 *   → finish (both certificates, CHUID, PUK, PIN, the card's own management key last)
 *   → POST /staff-cards (linked by its 9A certificate, last: a card pulled before then is never
 *   linked; pressing again with it resumes it)
 *
 * Then the page reloads with ?issued=<guid>, showing the card in the table. The PIN is never
 * stored; words are the catalogue's (data-words), written with textContent.
 */
"use strict";

(() => {
  const panel = document.getElementById("staff-card-issue");
  if (!panel) return;
  const { Problem, Stop, hex, generateKeys, recordOrStop } = window.OneCardDesk;
  const words = window.OneCardDesk.wordsOf(panel);
  const USER = panel.dataset.user;
  const steps = document.getElementById("issue-steps");
  const messageBox = document.getElementById("issue-message");
  const pinInput = document.getElementById("staff-card-pin");
  const button = document.getElementById("issue-staff-card");
  const server = window.OneCardDesk.serverCalls();
  const cardsvcInput = document.getElementById("cardsvc");
  const card = window.OneCardDesk.cardCalls(cardsvcInput);

  const progress = window.OneCardDesk.progress(steps, messageBox, words);
  const { say, step } = progress;

  function explain(error) {
    if (error instanceof Problem && error.where === "server" && words.has(`refusal.${error.code}`)) {
      return words(`refusal.${error.code}`);
    }
    return window.OneCardDesk.explain(words, error);
  }

  async function issue() {
    const pin = window.OneCardDesk.pinFrom(pinInput);
    step("step.identify");
    const { card_guid: guid } = await card("/card/identify");
    if (guid !== null) {
      step("step.check");
      let known = null;
      try {
        known = await server("GET", `/staff-cards/${guid}`);
      } catch (error) {
        if (!(error instanceof Problem && error.code === "card_unknown")) throw error;
      }
      if (known && known.holder === "resident") throw new Stop("error.issued_resident");
      if (known) {
        const status = words.has(`state.${known.status}`) ? words(`state.${known.status}`) : known.status;
        throw new Stop("error.issued_staff", { status });
      }
    }
    const { generated, managementKey } = await generateKeys(card, server, progress, guid, {
      sign_in: true,
    });
    step("step.certify");
    const certified = await server("POST", "/staff-cards/certificates", {
      user_name: USER,
      public_key: generated.public_key,
      sign_in_public_key: generated.sign_in_public_key,
      ...(guid ? { card_guid: guid } : {}),
    });
    step("step.write");
    await card("/provision/finish", {
      ...(managementKey || {}),
      certificate: certified.certificate,
      sign_in_certificate: certified.sign_in_certificate,
      chuid: certified.chuid,
      puk: certified.puk,
      pin,
      new_management_key: { type: "AES128", key: hex(certified.management_key) },
    });
    step("step.link");
    await recordOrStop("error.not_linked", () =>
      server("POST", "/staff-cards", { user_name: USER, certificate: certified.sign_in_certificate }));
    return certified.card_guid;
  }

  async function run() {
    button.disabled = true;
    document.getElementById("card-issued")?.remove(); // the last card's words, not this one's
    progress.reset();
    panel.dataset.outcome = "busy";
    say(words("busy"));
    try {
      const guid = await issue();
      progress.end("done");
      panel.dataset.outcome = "done";
      const next = new URL(window.location.href);
      next.searchParams.set("issued", guid);
      next.searchParams.set("cardsvc", cardsvcInput.value.trim());
      window.location.assign(next.toString());
    } catch (error) {
      progress.end("failed");
      panel.dataset.outcome = "failed";
      say(explain(error), "bad");
    } finally {
      pinInput.value = "";
      button.disabled = false;
    }
  }

  button.addEventListener("click", run);
})();
