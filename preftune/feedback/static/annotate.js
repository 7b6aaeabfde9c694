// preftune annotate: the one script of the annotation page (served as a file: the page's CSP forbids inline script).
// It sends the annotator's answer for the item on screen to /api/submit and reloads the page for the next item.
"use strict";

(function () {
  const app = document.getElementById("app");
  if (!app) return;
  const token = app.dataset.token;
  const assignment = app.dataset.assignment ? Number(app.dataset.assignment) : null;
  const task = app.dataset.task;
  const status = document.getElementById("status");
  let busy = false;

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  // A client-made id for this answer, kept until the server acknowledges it, so a retry never adds a second row.
  function submissionId() {
    const key = "preftune-submission-" + assignment;
    let id = sessionStorage.getItem(key);
    if (!id) {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem(key, id);
    }
    return id;
  }

  async function call(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    return { ok: response.ok, status: response.status, data: data };
  }

  async function submit(answer) {
    if (busy || assignment === null) return;
    busy = true;
    say("saving…");
    const body = { submission_id: submissionId(), assignment_id: assignment, answer: answer,
                   comment: document.getElementById("comment").value };
    for (let attempt = 0; attempt < 5; attempt++) {
      let result;
      try {
        result = await call("/api/submit", body);
      } catch (e) {  // network error: the same submission id again after a pause
        say("connection lost, retrying…", true);
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
        continue;
      }
      if (result.ok) {
        sessionStorage.removeItem("preftune-submission-" + assignment);
        say("saved");
        location.reload();
        return;
      }
      say(result.data.error || ("error " + result.status), true);
      busy = false;
      return;
    }
    say("could not reach the server; your answer is not saved yet", true);
    busy = false;
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const result = await call("/api/undo", {});
      if (result.ok) { location.reload(); return; }
      say(result.data.error || ("error " + result.status), true);
    } catch (e) {
      say("could not reach the server", true);
    }
    busy = false;
  }

  function on(id, handler) {
    const el = document.getElementById(id);
    if (el) el.addEventListener("click", handler);
  }

  on("undo", undo);
  on("skip", () => submit({ skip: true }));

  // -- pairwise ---------------------------------------------------------------------------------------------
  function strength() {
    const checked = document.querySelector("input[name=strength]:checked");
    return checked ? checked.value : null;
  }
  function choose(choice) {
    const answer = { choice: choice };
    const s = strength();
    if (s && choice !== "tie") answer.strength = s;
    submit(answer);
  }
  document.querySelectorAll("button.choice").forEach((b) => b.addEventListener("click", () => choose(b.dataset.choice)));

  // -- correction ---------------------------------------------------------------------------------------------
  let better = null;
  function pickBetter(side) {
    better = side;
    document.querySelectorAll(".response").forEach((r) => r.classList.toggle("selected", r.dataset.side === side));
    const editor = document.getElementById("editor");
    const area = document.getElementById("corrected");
    editor.hidden = false;
    area.value = document.querySelector("#response-" + side + " .text").textContent;
    area.focus();
  }
  function submitCorrection() {
    if (!better) { say("pick the better answer first (a or b)", true); return; }
    submit({ better: better, corrected: document.getElementById("corrected").value });
  }
  document.querySelectorAll("button.better").forEach((b) => b.addEventListener("click", () => pickBetter(b.dataset.better)));
  on("submit-correction", submitCorrection);

  // -- ranking: number keys or drag ------------------------------------------------------------------------------
  const list = document.getElementById("ranking");
  let picked = [];
  let dragged = false;
  function showRanks() {
    if (!list) return;
    Array.from(list.children).forEach((li, i) => {
      let rank = li.querySelector(".rank");
      if (!rank) { rank = document.createElement("span"); rank.className = "rank"; li.prepend(rank); }
      // a rank shows once it is decided: picked by key, implied (all but one picked), or set by dragging
      const decided = dragged || i < picked.length || picked.length >= list.children.length - 1;
      rank.textContent = decided ? "#" + (i + 1) : "";
    });
  }
  function pick(pos) {
    if (picked.includes(pos)) return;
    picked.push(pos);
    const items = Array.from(list.children);
    const order = picked.concat(items.map((li) => Number(li.dataset.pos)).filter((p) => !picked.includes(p)));
    order.forEach((p) => list.appendChild(items.find((li) => Number(li.dataset.pos) === p)));
    showRanks();
  }
  function resetRanking() {
    picked = []; dragged = false;
    Array.from(list.children).sort((a, b) => a.dataset.pos - b.dataset.pos).forEach((li) => list.appendChild(li));
    showRanks();
  }
  function submitRanking() {
    const n = list.children.length;
    if (!dragged && picked.length < n - 1) { say("rank the answers first (number keys or drag)", true); return; }
    submit({ order: Array.from(list.children).map((li) => Number(li.dataset.pos)) });
  }
  if (list) {
    let moving = null;
    list.addEventListener("dragstart", (e) => { moving = e.target.closest("li"); moving.classList.add("dragging"); });
    list.addEventListener("dragend", () => { if (moving) moving.classList.remove("dragging"); moving = null; });
    list.addEventListener("dragover", (e) => {
      e.preventDefault();
      const over = e.target.closest("li");
      if (!moving || !over || over === moving) return;
      const box = over.getBoundingClientRect();
      list.insertBefore(moving, e.clientY < box.top + box.height / 2 ? over : over.nextSibling);
      dragged = true;
      showRanks();
    });
    on("submit-ranking", submitRanking);
  }

  // -- rating -------------------------------------------------------------------------------------------------
  document.querySelectorAll("button.rate").forEach((b) => b.addEventListener("click", () => submit({ rating: Number(b.dataset.rating) })));

  // -- rules --------------------------------------------------------------------------------------------------
  const ruleRows = Array.from(document.querySelectorAll("tr.rule"));
  function markCurrentRule() {
    const open = ruleRows.find((tr) => !tr.querySelector("input:checked"));
    ruleRows.forEach((tr) => tr.classList.toggle("current", tr === open));
    return open;
  }
  function answerNextRule(value) {
    const open = markCurrentRule();
    if (!open) return;
    open.querySelector("input[value=" + value + "]").checked = true;
    markCurrentRule();
  }
  function submitRules() {
    const answers = {};
    for (const tr of ruleRows) {
      const checked = tr.querySelector("input:checked");
      if (!checked) { say("answer every rule first", true); return; }
      answers[tr.dataset.rule] = checked.value;
    }
    submit({ answers: answers });
  }
  ruleRows.forEach((tr) => tr.addEventListener("change", markCurrentRule));
  markCurrentRule();
  on("submit-rules", submitRules);

  // -- keyboard -----------------------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    const typing = e.target.tagName === "TEXTAREA" || (e.target.tagName === "INPUT" && e.target.type === "text");
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && e.target.id === "corrected") { e.preventDefault(); submitCorrection(); }
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key;
    if (key === "z") { undo(); return; }
    if (assignment === null) return;
    if (key === "s") { submit({ skip: true }); return; }
    if (key === "c") { e.preventDefault(); document.getElementById("comment").focus(); return; }
    if (task === "pairwise") {
      if (key === "a" || key === "ArrowLeft") choose("left");
      else if (key === "b" || key === "ArrowRight") choose("right");
      else if (key === "t") choose("tie");
      else if (["1", "2", "3"].includes(key)) {
        const box = document.querySelectorAll("input[name=strength]")[Number(key) - 1];
        box.checked = !box.checked;
      }
    } else if (task === "correction") {
      if (key === "a") { e.preventDefault(); pickBetter("left"); }
      else if (key === "b") { e.preventDefault(); pickBetter("right"); }
    } else if (task === "ranking") {
      const n = Number(key);
      if (Number.isInteger(n) && n >= 1 && n <= list.children.length) pick(n - 1);
      else if (key === "Backspace") resetRanking();
      else if (key === "Enter") submitRanking();
    } else if (task === "rating") {
      const n = Number(key);
      if (Number.isInteger(n) && n >= 1 && n <= 7) submit({ rating: n });
    } else if (task === "rules") {
      if (key === "y") answerNextRule("yes");
      else if (key === "n") answerNextRule("no");
      else if (key === "u") answerNextRule("unsure");
      else if (key === "Enter") submitRules();
    }
  });
  app.dataset.ready = "1";  // the handlers are in place (tests wait for this before pressing keys)
})();
