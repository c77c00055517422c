// tract-eval view: the sample browser and the comparison. Every text from data or models is put into the
// page with textContent (or as a text node), never parsed as HTML.
"use strict";
(function () {
  const PAGE_SIZE = 50;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (!Number.isFinite(value)) return String(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(digits === undefined ? 3 : digits);
  }

  function numberOrNull(a, b, direction) {
    // nulls last whatever the direction
    if (a === null || a === undefined) return (b === null || b === undefined) ? 0 : 1;
    if (b === null || b === undefined) return -1;
    return direction * (a - b);
  }

  function byId(a, b, direction) {
    return direction * String(a).localeCompare(String(b), undefined, {numeric: true});
  }

  // -- paging ------------------------------------------------------------------------------------------
  function Pager(onChange) {
    this.page = 0;
    this.pages = 1;
    const prev = document.getElementById("prev");
    const next = document.getElementById("next");
    this.info = document.getElementById("page-info");
    prev.addEventListener("click", () => { if (this.page > 0) { this.page -= 1; onChange(); } });
    next.addEventListener("click", () => { if (this.page < this.pages - 1) { this.page += 1; onChange(); } });
  }
  Pager.prototype.slice = function (items) {
    this.pages = Math.max(1, Math.ceil(items.length / PAGE_SIZE));
    this.page = Math.min(this.page, this.pages - 1);
    this.info.textContent = "page " + (this.page + 1) + " of " + this.pages;
    return items.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE);
  };

  // -- one sample, opened -------------------------------------------------------------------------------
  function facts(pairs) {
    const dl = el("dl", "facts");
    for (const [name, value] of pairs) {
      dl.append(el("dt", null, name), el("dd", null, value));
    }
    return dl;
  }

  function bars(probs, gold) {
    const box = el("div", "bars");
    const keys = Object.keys(probs || {}).sort((a, b) => Number(a) - Number(b));
    const goldPoint = gold === null || gold === undefined ? null : Math.floor(gold + 0.5);
    for (const key of keys) {
      const row = el("div", "bar-row" + (Number(key) === goldPoint ? " gold" : ""));
      const track = el("span", "track");
      const fill = el("span", "fill");
      fill.style.width = (100 * Math.max(0, Math.min(1, probs[key]))).toFixed(1) + "%";
      track.append(fill);
      row.append(el("span", "k", key), track, el("span", "p", fmt(probs[key], 2)));
      box.append(row);
    }
    if (keys.length) box.title = "score distribution" + (goldPoint === null ? "" : " (gold rounded: " + goldPoint + ")");
    return box;
  }

  function cotText(cot, forced, protocol, label) {
    const pre = el("pre", "cot-text");
    const marker = el("span", "readout", "▲ " + label);
    if (protocol === "prometheus") {
      const at = cot.lastIndexOf("[RESULT]");
      if (at < 0) {
        pre.append(cot, el("span", "readout missing", "▲ no [RESULT] in this output"));
      } else {
        pre.append(cot.slice(0, at), marker, el("mark", "verdict", cot.slice(at)));
      }
      return pre;
    }
    const appended = (forced || "").trim();
    const end = cot.trimEnd();
    if (appended && end.endsWith(appended)) {
      const at = end.length - appended.length;
      pre.append(cot.slice(0, at), el("span", "forced", cot.slice(at)));
      pre.lastChild.title = "appended by tract-eval (forced): the model did not write it";
    } else if (cot.trim() === "") {
      pre.append(el("span", "muted", "(no CoT: the score is read right after the input)"));
    } else {
      pre.append(cot);
    }
    pre.append(marker);
    return pre;
  }

  function sampleDetail(row, data) {
    const box = el("div", "sample");
    box.append(facts([
      ["id", row.id], ["gold", fmt(row.gold)], ["prediction", fmt(row.prediction)], ["status", row.status],
      ["per CoT", (row.per_cot || []).map((v) => fmt(v)).join(", ") || "–"],
      ["tokens", row.prompt_tokens + " prompt, " + row.generated_tokens + " generated"],
      ["seconds", fmt(row.seconds, 2)], ["meta", JSON.stringify(row.meta || {})],
    ]));
    const input = el("details", "input");
    input.append(el("summary", null, "Input (" + (row.input || "").length + " characters)"),
      el("pre", "input-text", row.input || ""));
    box.append(input);
    const count = Math.max((row.cots || []).length, (row.score_probs || []).length, (row.per_cot || []).length);
    for (let i = 0; i < count; i += 1) {
      const cot = el("div", "cot");
      cot.append(el("h4", null, "CoT " + (i + 1) + " · score " + fmt((row.per_cot || [])[i])));
      cot.append(cotText((row.cots || [])[i] || "", (row.forced || [])[i], data.protocol, data.readout_label));
      if ((row.score_probs || [])[i]) cot.append(bars(row.score_probs[i], row.gold));
      cot.append(facts([
        ["finish reason", (row.finish_reasons || [])[i] || "–"],
        ["forced", JSON.stringify((row.forced || [])[i] || "")],
        ["cut", fmt((row.cut || [])[i])], ["retries", fmt((row.retries || [])[i])],
        ["candidate mass", fmt((row.candidate_mass || [])[i])],
        ["missing candidates", JSON.stringify((row.missing_candidates || [])[i] || [])],
      ]));
      box.append(cot);
    }
    if ((row.errors || []).length) {
      const list = el("ul", "errors");
      for (const error of row.errors) list.append(el("li", null, error));
      box.append(el("h4", null, "Errors"), list);
    }
    return box;
  }

  function pairDetail(item, data) {
    const box = el("div", "pair");
    for (const side of ["chosen", "rejected"]) {
      const column = el("div", "side side-" + side);
      const row = item[side];
      column.append(el("h3", null, side + " · " + fmt(row ? row.prediction : null)));
      column.append(row ? sampleDetail(row, data) : el("p", "muted", "this side was not judged"));
      box.append(column);
    }
    return box;
  }

  // -- the sample browser ------------------------------------------------------------------------------
  function items(data) {
    if (data.kind !== "pairwise") {
      return data.rows.map((row) => ({row: row, id: row.id, statuses: [row.status], error: row.error,
        abs_error: row.abs_error, cells: [row.id, fmt(row.gold), fmt(row.prediction), fmt(row.abs_error)]}));
    }
    return data.pairs.map((pair) => {
      const chosen = pair.chosen === null ? null : data.rows[pair.chosen];
      const rejected = pair.rejected === null ? null : data.rows[pair.rejected];
      const sides = [chosen, rejected].filter((s) => s);
      return {chosen: chosen, rejected: rejected, id: pair.id, statuses: sides.map((s) => s.status),
        error: sides.map((s) => s.error).filter((e) => e).join(" | "), margin: pair.margin,
        cells: [pair.id, pair.subset, fmt(chosen && chosen.prediction), fmt(rejected && rejected.prediction),
          fmt(pair.margin)]};
    });
  }

  function haystack(item) {
    if (item.hay === undefined) {
      const rows = item.row ? [item.row] : [item.chosen, item.rejected].filter((s) => s);
      const parts = [item.id];
      for (const row of rows) parts.push(row.id, row.input || "", (row.cots || []).join("\n"), (row.errors || []).join("\n"));
      item.hay = parts.join("\n").toLowerCase();
    }
    return item.hay;
  }

  function runPage() {
    const slug = document.body.dataset.run;
    const data = (window.TRACT_VIEW || {})[slug];
    if (!data) throw new Error("tract-eval view: the data of run " + slug + " did not load");
    const all = items(data);
    const state = {status: "", text: "", sort: null, direction: -1};
    const tbody = document.querySelector("#sample-table tbody");
    const headers = Array.from(document.querySelectorAll("#sample-table thead th"));
    const columns = headers.length;
    const shown = document.getElementById("shown-count");
    const pager = new Pager(render);

    function selected() {
      const text = state.text.toLowerCase();
      const chosen = all.filter((item) => (!state.status || item.statuses.includes(state.status)) &&
        (!text || haystack(item).includes(text)));
      if (state.sort === "id") chosen.sort((a, b) => byId(a.id, b.id, state.direction));
      else if (state.sort) chosen.sort((a, b) => numberOrNull(a[state.sort], b[state.sort], state.direction));
      return chosen;
    }

    function toggle(tr, item) {
      const next = tr.nextElementSibling;
      if (next && next.classList.contains("detail")) { next.remove(); tr.classList.remove("open"); return; }
      const detail = el("tr", "detail");
      const cell = el("td");
      cell.colSpan = columns;
      cell.append(data.kind === "pairwise" ? pairDetail(item, data) : sampleDetail(item.row, data));
      detail.append(cell);
      tr.after(detail);
      tr.classList.add("open");
    }

    function render() {
      const chosen = selected();
      shown.textContent = chosen.length + " of " + all.length + (data.kind === "pairwise" ? " pairs" : " samples");
      const body = document.createDocumentFragment();
      for (const item of pager.slice(chosen)) {
        const tr = el("tr", "sample-row");
        item.cells.forEach((text, i) => tr.append(el("td", headers[i].classList.contains("num") ? "num" : null, text)));
        const status = el("td");
        for (const s of Array.from(new Set(item.statuses))) status.append(el("span", "status status-" + s, s), " ");
        tr.append(status);
        const error = el("td", "error", item.error.length > 120 ? item.error.slice(0, 117) + "..." : item.error);
        error.title = item.error;
        tr.append(error);
        tr.addEventListener("click", () => toggle(tr, item));
        body.append(tr);
      }
      tbody.replaceChildren(body);
    }

    document.getElementById("status-filter").addEventListener("change", (event) => {
      state.status = event.target.value; pager.page = 0; render();
    });
    document.getElementById("text-filter").addEventListener("input", (event) => {
      state.text = event.target.value; pager.page = 0; render();
    });
    for (const th of document.querySelectorAll("#sample-table th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        state.direction = state.sort === key ? -state.direction : (key === "id" ? 1 : -1);
        state.sort = key;
        for (const other of document.querySelectorAll("#sample-table th[data-sort]")) other.classList.remove("asc", "desc");
        th.classList.add(state.direction > 0 ? "asc" : "desc");
        pager.page = 0;
        render();
      });
    }
    render();
  }

  // -- two judges, joined by sample ---------------------------------------------------------------------
  function comparePage() {
    const pickA = document.getElementById("judge-a");
    const pickB = document.getElementById("judge-b");
    const tbody = document.querySelector("#compare-table tbody");
    const shown = document.getElementById("shown-count");
    const pager = new Pager(render);
    let joined = [];

    function join() {
      const a = window.TRACT_VIEW[pickA.value];
      const b = window.TRACT_VIEW[pickB.value];
      if (!a || !b) throw new Error("tract-eval view: a compared run's data did not load");
      const other = new Map(b.rows.map((row) => [row.key, row]));
      joined = a.rows.filter((row) => other.has(row.key)).map((row) => {
        const match = other.get(row.key);
        const both = row.prediction !== null && match.prediction !== null;
        return {a: row, b: match, diff: both ? Math.abs(row.prediction - match.prediction) : null};
      });
      joined.sort((x, y) => numberOrNull(x.diff, y.diff, -1) || byId(x.a.key, y.a.key, 1));
      document.getElementById("head-a").textContent = a.judge;
      document.getElementById("head-b").textContent = b.judge;
      shown.textContent = joined.length + " samples both judged (" + a.judge + ": " + a.rows.length + ", " +
        b.judge + ": " + b.rows.length + ")";
      pager.page = 0;
      render();
    }

    function render() {
      const body = document.createDocumentFragment();
      for (const pair of pager.slice(joined)) {
        const tr = el("tr", "compare-row");
        for (const text of [pair.a.key, fmt(pair.a.gold), fmt(pair.a.prediction), fmt(pair.b.prediction),
          fmt(pair.diff)]) tr.append(el("td", tr.childElementCount ? "num" : null, text));
        for (const row of [pair.a, pair.b]) {
          const td = el("td");
          td.append(el("span", "status status-" + row.status, row.status));
          tr.append(td);
        }
        body.append(tr);
      }
      tbody.replaceChildren(body);
    }

    pickA.addEventListener("change", join);
    pickB.addEventListener("change", join);
    join();
  }

  const page = document.body.dataset.page;
  if (page === "run") runPage();
  else if (page === "compare") comparePage();
  document.body.dataset.ready = "1";
  performance.mark("tract-view-ready");
})();
