/*
 * The card desk of a resident's page (server/web/templates/staff/resident.html): issue, replace,
 * renew a card and unblock its PIN on this computer's reader. No build step, no libraries.
 *
 * The page runs the steps of `onecard card provision|replace|renew|unblock-pin`
 * (onecard/card.py), step for step: every card operation through the local card service
 * (cardsvc/service.py, http://127.0.0.1), everything else through the server's JSON calls
 * (/api/v1, with the staff session cookie and the page's CSRF token). The card service never
 * talks to the server: this page carries the server's answers to it.
 *
 *   issue            identify → (a GUID on the card: GET /cards/<guid>, an issued card stops here;
 *                    its keys from POST /cards/<guid>/secrets when its management key is its own)
 *                    → generate (the card's 9E key) → POST /cards/certificates → finish
 *                    (certificate, CHUID, PUK, PIN, the card's own management key) → POST /cards
 *                    (recorded last: a card pulled before then is never recorded as issued;
 *                    the server marks the resident's earlier card replaced)
 *   replace          why (`onecard card replace --reason`): lost or stolen → POST
 *                    /cards/<old>/revoke first, before the card is touched, so the old card is
 *                    revoked even if the new one then fails (the page says so and reloads: the
 *                    resident has no active card, the Issue button resumes); damaged → nothing
 *                    first, the old card becomes replaced when the new one is recorded. Then
 *                    the steps of issue.
 *   renew            identify (must be this card) → POST /cards/<guid>/renew → finish
 *   unblock PIN      identify (must be this card) → POST /cards/<guid>/secrets → unblock-pin
 *
 * After a success, or a failure after the old card was revoked, the page reloads (the cards
 * table and the buttons as they are now) and shows the steps and the outcome again (kept in
 * this tab's sessionStorage for the reload only).
 *
 * Words are the gettext catalogue's, rendered by the server into data-words (zh-CN or en);
 * everything is written with textContent, never as HTML. The PIN is never stored. The calls,
 * their errors and the words come from static/card-service.js, shared with the staff-card page.
 */
"use strict";

(() => {
  const desk = document.getElementById("card-desk");
  if (!desk) return;
  // static/card-service.js
  const { Problem, Stop, hex, generateKeys, recordOrStop } = window.OneCardDesk;
  const words = window.OneCardDesk.wordsOf(desk);
  const RESIDENT = Number(desk.dataset.resident);
  const steps = document.getElementById("card-steps");
  const messageBox = document.getElementById("card-message");
  const pinInput = document.getElementById("card-pin");
  const reasonSelect = document.getElementById("replace-reason"); // only with an active card
  const DONE_KEY = `onecard.card-desk.done.${RESIDENT}`; // sessionStorage: this tab only
  const server = window.OneCardDesk.serverCalls();
  const card = window.OneCardDesk.cardCalls(document.getElementById("cardsvc"));

  // --- what the technician sees ------------------------------------------------------------

  const progress = window.OneCardDesk.progress(steps, messageBox, words);
  const { say, step } = progress;

  const explain = (error) => window.OneCardDesk.explain(words, error);

  // --- the flows (onecard/card.py) ---------------------------------------------------------

  const newPin = () => window.OneCardDesk.pinFrom(pinInput);

  async function identify(expected) {
    step("step.identify");
    const { card_guid: guid } = await card("/card/identify");
    if (expected !== undefined) {
      if (guid === null) throw new Stop("error.blank");
      if (guid !== expected) throw new Stop("error.not_this_card", { guid: expected });
    }
    return guid;
  }

  // Why the card is replaced, asked before anything is touched.
  function replaceReason() {
    const chosen = reasonSelect ? reasonSelect.selectedOptions[0] : undefined;
    if (!chosen || !chosen.value) {
      if (reasonSelect) {
        reasonSelect.setAttribute("aria-invalid", "true");
        reasonSelect.focus();
      }
      throw new Stop("error.reason");
    }
    reasonSelect.removeAttribute("aria-invalid");
    return {
      value: chosen.value,
      words: chosen.textContent.trim(),
      revokeFirst: chosen.hasAttribute("data-revoke-first"),
    };
  }

  // Set once this run has revoked the old card: a later failure leaves it revoked (as the CLI).
  let revokedOld = null;

  async function issue() {
    const guid = await provision(newPin());
    return words("done.issued", { guid });
  }

  async function replace(oldGuid) {
    const pin = newPin();
    const reason = replaceReason();
    if (reason.revokeFirst) {
      step("step.revoke");
      await server("POST", `/cards/${oldGuid}/revoke`, { reason: reason.value });
      revokedOld = { old: oldGuid, reason: reason.words };
    }
    const guid = await provision(pin);
    const done = reason.revokeFirst ? "done.replaced_revoked" : "done.replaced";
    return words(done, { guid, old: oldGuid, reason: reason.words });
  }

  // The steps of `onecard card provision` for the card on the reader; its GUID once recorded.
  async function provision(pin) {
    const guid = await identify();
    if (guid !== null) {
      step("step.check");
      try {
        const known = await server("GET", `/cards/${guid}`);
        const status = words.has(`state.${known.status}`) ? words(`state.${known.status}`) : known.status;
        throw new Stop("error.already_issued", { status });
      } catch (error) {
        if (!(error instanceof Problem && error.code === "card_unknown")) throw error;
      }
    }
    const { generated, managementKey } = await generateKeys(card, server, progress, guid);
    step("step.certify");
    const certified = await server("POST", "/cards/certificates", {
      resident_id: RESIDENT,
      public_key: generated.public_key,
      ...(guid ? { card_guid: guid } : {}),
    });
    step("step.write");
    await card("/provision/finish", {
      ...(managementKey || {}),
      certificate: certified.certificate,
      chuid: certified.chuid,
      puk: certified.puk,
      pin,
      new_management_key: { type: "AES128", key: hex(certified.management_key) },
    });
    step("step.record");
    await recordOrStop("error.not_recorded", () =>
      server("POST", "/cards", { resident_id: RESIDENT, certificate: certified.certificate }));
    return certified.card_guid;
  }

  async function renew(guid) {
    await identify(guid);
    step("step.renew");
    const renewed = await server("POST", `/cards/${guid}/renew`, {});
    step("step.write_renewal");
    await card("/provision/finish", {
      management_key: hex(renewed.management_key),
      management_key_type: "AES128",
      certificate: renewed.certificate,
      chuid: renewed.chuid,
    });
    return words("done.renewed", { guid, expiry: renewed.expiry });
  }

  async function unblock(guid) {
    const pin = newPin();
    await identify(guid);
    step("step.secrets");
    const keys = await server("POST", `/cards/${guid}/secrets`, { purpose: "unblock-pin" });
    step("step.unblock");
    await card("/card/unblock-pin", { puk: keys.puk, pin });
    return words("done.unblocked", { guid });
  }

  const FLOWS = { issue, replace, renew, unblock };
  const buttons = Array.from(desk.querySelectorAll("button[data-card-action]"));

  // Show the steps and the outcome again after the page reloads with the resident's cards as
  // they are now.
  function reloadShowing(text, tone) {
    const shown = Array.from(steps.children, (li) => [
      li.dataset.step,
      li.dataset.state,
      li.textContent,
    ]);
    sessionStorage.setItem(DONE_KEY, JSON.stringify({ text, tone, steps: shown }));
    desk.dataset.outcome = "reloading";
    window.location.reload();
  }

  async function run(button) {
    buttons.forEach((b) => { b.disabled = true; });
    progress.reset();
    revokedOld = null;
    desk.dataset.outcome = "busy";
    say(words("busy"));
    try {
      const done = await FLOWS[button.dataset.cardAction](button.dataset.guid);
      progress.end("done");
      reloadShowing(done, "ok");
    } catch (error) {
      progress.end("failed");
      if (revokedOld) {
        // The old card is revoked and the resident has no active card now: show it so.
        reloadShowing(`${explain(error)} ${words("error.revoked_anyway", revokedOld)}`, "bad");
      } else {
        desk.dataset.outcome = "failed";
        say(explain(error), "bad");
      }
    } finally {
      pinInput.value = "";
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  buttons.forEach((button) => button.addEventListener("click", () => run(button)));

  const kept = sessionStorage.getItem(DONE_KEY);
  if (kept) {
    sessionStorage.removeItem(DONE_KEY);
    const { text, tone, steps: shown } = JSON.parse(kept);
    for (const [name, state, line] of shown) {
      const li = document.createElement("li");
      li.dataset.step = name;
      li.dataset.state = state;
      li.textContent = line;
      steps.append(li);
    }
    desk.dataset.outcome = tone === "ok" ? "done" : "failed";
    say(text, tone);
  }
})();
