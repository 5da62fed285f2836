// attendo explorer: draws the records of attendo.explorer.sentence_record.
// Plain browser JavaScript, no libraries and no network except, in live mode, a POST to
// "translate" on the server that served the page.
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("attendo-data").textContent);
  var MARK = "\u2581";
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  var WARM = [[255, 247, 236], [253, 212, 158], [252, 141, 89], [215, 48, 31], [127, 0, 0]];

  var state = {
    sentences: DATA.sentences || [],
    s: 0, // sentence
    h: 0, // hypothesis in the n-best list
    kind: "cross", // "cross" | "self" | "matrix:NAME"
    layer: "", // "" = the model's own attention (cross) ; else a layer index
    head: "", // "" = mean over heads ; else a head index
    view: null, // what the heatmap shows now (see currentView)
    showLinks: true, // draw the alignment links of the hypothesis over the cross-attention
    pictures: [], // image model: the data URL of each uploaded image, by record
  };
  var IMAGE_MODEL = !!(DATA.model && DATA.model.input === "image");

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ramp(stops, x) {
    x = Math.max(0, Math.min(1, Number(x) || 0));
    var p = x * (stops.length - 1);
    var i = Math.min(Math.floor(p), stops.length - 2);
    var f = p - i, a = stops[i], b = stops[i + 1], c = [];
    for (var k = 0; k < 3; k++) c.push(Math.round(a[k] + f * (b[k] - a[k])));
    return "rgb(" + c.join(",") + ")";
  }

  function hasMarks(tokens) {
    return tokens.some(function (t) { return t.charAt(0) === MARK; });
  }

  // a piece as a label: "▁word" -> "word"; a continuation piece -> "·piece" (when pieces are marked)
  function label(tok, marked) {
    if (tok.charAt(0) === MARK) return tok.length > 1 ? tok.slice(1) : MARK;
    if (marked && tok.charAt(0) !== "<") return "\u00b7" + tok;
    return tok;
  }

  function meanHeads(heads) { // (H, R, C) -> (R, C)
    var H = heads.length;
    return heads[0].map(function (row, i) {
      return row.map(function (_, j) {
        var s = 0;
        for (var k = 0; k < H; k++) s += heads[k][i][j];
        return s / H;
      });
    });
  }

  function matrixMax(m) {
    var mx = 0;
    m.forEach(function (row) { row.forEach(function (v) { if (v > mx) mx = v; }); });
    return mx;
  }

  // ------------------------------------------------------------------ what to show

  function record() { return state.sentences[state.s]; }
  function hyp() { var r = record(); return r && r.hyps ? r.hyps[state.h] : null; }

  function kinds() {
    var r = record(), hy = hyp(), out = [];
    if (!r || !hy) return out;
    if (hy.attention) out.push(["cross", "cross-attention (output \u00d7 source)"]);
    if (r.self_attention) out.push(["self", "encoder self-attention (source \u00d7 source)"]);
    Object.keys(hy.matrices || {}).forEach(function (name) {
      out.push(["matrix:" + name, name + " (before each step)"]);
    });
    return out;
  }

  function currentView() {
    var r = record(), hy = hyp();
    if (!r || !hy) return null;
    var v = { rows: hy.tgt_tokens, cols: r.src_tokens, rowName: "output", colName: "source",
      m: null, strips: hy.strips || {}, coverage: null, total: null, scale: 1, note: "" };
    var cov = hy.matrices && hy.matrices.coverage;
    if (state.kind === "cross") {
      if (!hy.attention) return null;
      if (state.layer === "" || !hy.heads) {
        v.m = hy.attention;
        var model = DATA.model || {};
        v.note = hy.heads ? "layer " + model.attn_layer + ", mean of heads (the model's attention)" : "";
      } else {
        var layer = hy.heads[Number(state.layer)];
        v.m = state.head === "" ? meanHeads(layer) : layer[Number(state.head)];
      }
      if (cov && cov.length === v.m.length) v.coverage = cov;
      if (hy.links && hy.links.length) v.links = hy.links;
    } else if (state.kind === "self") {
      var L = r.self_attention[Number(state.layer || 0)];
      v.m = state.head === "" ? meanHeads(L) : L[Number(state.head)];
      v.rows = r.src_tokens; v.rowName = "query"; v.colName = "key"; v.strips = {};
    } else if (state.kind.indexOf("matrix:") === 0) {
      v.m = (hy.matrices || {})[state.kind.slice(7)];
      if (!v.m) return null;
      v.scale = Math.max(1, matrixMax(v.m));
      v.note = "scale 0 \u2013 " + v.scale.toFixed(2);
    }
    if (!v.m || !v.m.length || !v.cols.length) return null;
    if (v.coverage) {
      var T = v.m.length;
      v.total = v.coverage[T - 1].map(function (c, j) { return c + hy.attention[T - 1][j]; });
    }
    return v;
  }

  // ------------------------------------------------------------------ drawing

  function option(select, value, text) {
    var o = el("option", null, text);
    o.value = value;
    select.appendChild(o);
  }

  function fillControls() {
    var r = record(), hy = hyp(), kindSel = $("kind"), layerSel = $("layer"), headSel = $("head");
    [kindSel, layerSel, headSel].forEach(function (s) { s.textContent = ""; });
    var ks = kinds();
    if (!ks.some(function (k) { return k[0] === state.kind; })) state.kind = ks.length ? ks[0][0] : "cross";
    ks.forEach(function (k) { option(kindSel, k[0], k[1]); });
    kindSel.value = state.kind;
    kindSel.parentNode.hidden = ks.length < 2;
    var stack = null; // (L, H, R, C) when the view has layers and heads
    if (state.kind === "cross" && hy && hy.heads) stack = hy.heads;
    if (state.kind === "self" && r && r.self_attention) stack = r.self_attention;
    layerSel.parentNode.hidden = headSel.parentNode.hidden = !stack;
    if (!stack) { state.layer = state.head = ""; return; }
    if (state.kind === "cross") option(layerSel, "", "model's attention");
    stack.forEach(function (_, l) { option(layerSel, String(l), "layer " + l); });
    if (state.kind === "self" && state.layer === "") state.layer = "0";
    if (Number(state.layer) >= stack.length) state.layer = state.kind === "cross" ? "" : "0";
    layerSel.value = state.layer;
    headSel.disabled = state.layer === "";
    option(headSel, "", "mean of heads");
    stack[0].forEach(function (_, k) { option(headSel, String(k), "head " + k); });
    if (state.layer === "" || Number(state.head) >= stack[0].length) state.head = "";
    headSel.value = state.head;
  }

  function tokenLine(container, tokens, cls, attr) {
    container.textContent = "";
    var marked = hasMarks(tokens);
    tokens.forEach(function (tok, k) {
      var text = tok.charAt(0) === MARK ? (tok.length > 1 ? tok.slice(1) : MARK) : tok;
      var span = el("span", "tok " + cls, text);
      span.setAttribute(attr, k);
      if (k > 0 && (!marked || tok.charAt(0) === MARK || tok.charAt(0) === "<")) span.classList.add("ws");
      span.title = tok;
      container.appendChild(span);
    });
  }

  function drawHeatmap(v) {
    var box = $("heatmap");
    box.textContent = "";
    var R = v.rows.length, C = v.cols.length, names = Object.keys(v.strips);
    var cell = Math.max(12, Math.min(28, Math.floor(640 / Math.max(C, 1))));
    var grid = el("div", "grid");
    grid.style.gridTemplateColumns = "max-content repeat(" + C + ", " + cell + "px)" +
      (names.length ? " repeat(" + names.length + ", 38px)" : "");
    grid.style.gridAutoRows = "minmax(" + cell + "px, auto)";
    var colMarked = hasMarks(v.cols), rowMarked = hasMarks(v.rows);
    var linked = {}; // "i,j" -> the link sets that mark cell (i, j)
    if (v.links && state.showLinks) {
      v.links.forEach(function (set) {
        set.cells.forEach(function (c) { (linked[c[0] + "," + c[1]] = linked[c[0] + "," + c[1]] || []).push(set); });
      });
    }
    grid.appendChild(el("div", "corner"));
    v.cols.forEach(function (tok, j) {
      var t = el("span", "tok col-tok", label(tok, colMarked));
      t.setAttribute("data-j", j);
      t.title = tok;
      grid.appendChild(t);
    });
    names.forEach(function (name) { grid.appendChild(el("div", "strip-name", name)); });
    v.m.forEach(function (row, i) {
      var t = el("span", "tok row-tok", label(v.rows[i], rowMarked));
      t.setAttribute("data-i", i);
      t.title = v.rows[i];
      grid.appendChild(t);
      row.forEach(function (w, j) {
        var c = el("div", "cell");
        c.setAttribute("data-i", i);
        c.setAttribute("data-j", j);
        c.style.backgroundColor = ramp(VIRIDIS, w / v.scale);
        c.title = v.rows[i] + " \u2192 " + v.cols[j] + ": " + Number(w).toFixed(3);
        (linked[i + "," + j] || []).forEach(function (set) {
          c.classList.add("link-" + set.kind);
          c.title += " \u00b7 " + set.label;
        });
        grid.appendChild(c);
      });
      names.forEach(function (name) {
        var x = v.strips[name][i];
        var s = el("div", "strip", Number(x).toFixed(2));
        s.setAttribute("data-i", i);
        s.style.backgroundColor = ramp(WARM, x);
        s.style.color = x > 0.6 ? "#fff" : "#111";
        s.title = name + " at " + v.rows[i] + ": " + Number(x).toFixed(3);
        grid.appendChild(s);
      });
    });
    if (v.total) {
      grid.appendChild(el("div", "cov-name", "coverage"));
      v.total.forEach(function (_, j) {
        var c = el("div", "cov");
        c.setAttribute("data-cov", j);
        grid.appendChild(c);
      });
      names.forEach(function () { grid.appendChild(el("div")); });
    }
    box.appendChild(grid);
    showCoverage(null);
  }

  // the alignment toggle and its legend, when the view has links
  function showLinksBox(v) {
    var box = $("links-box"), legend = $("links-legend");
    legend.textContent = "";
    box.hidden = !(v && v.links);
    if (box.hidden) return;
    $("show-links").checked = state.showLinks;
    v.links.forEach(function (set) {
      var item = el("span", "legend-item");
      item.appendChild(el("span", "swatch link-" + set.kind));
      item.appendChild(el("span", null, set.label + " (" + set.links.length + ")"));
      legend.appendChild(item);
    });
  }

  // coverage strip: total after the last step, or the coverage before step i while row i is hovered
  function showCoverage(i) {
    var v = state.view;
    if (!v || !v.total) return;
    var values = i === null ? v.total : v.coverage[i];
    var mx = Math.max(1, Math.max.apply(null, v.total));
    document.querySelectorAll("#heatmap .cov").forEach(function (c) {
      var x = values[Number(c.getAttribute("data-cov"))];
      c.textContent = x.toFixed(1);
      c.style.backgroundColor = ramp(WARM, x / mx);
      c.style.color = x / mx > 0.6 ? "#fff" : "#111";
      c.title = (i === null ? "total attention received: " : "coverage before output " + (i + 1) + ": ") + x.toFixed(3);
    });
    var name = document.querySelector("#heatmap .cov-name");
    if (name) name.textContent = i === null ? "coverage (total)" : "coverage before " + (i + 1);
  }

  function render() {
    var r = record(), sentList = $("sentences");
    $("sentences-box").hidden = state.sentences.length < 2;
    sentList.textContent = "";
    state.sentences.forEach(function (rec, k) {
      var li = el("li", k === state.s ? "selected" : "", rec.source || "(empty)");
      li.addEventListener("click", function () { state.s = k; state.h = 0; render(); });
      sentList.appendChild(li);
    });
    var nb = $("nbest");
    nb.textContent = "";
    $("translation").textContent = "";
    $("output").textContent = $("source").textContent = "";
    $("heatmap").textContent = "";
    $("view-note").textContent = "";
    $("links-box").hidden = true;
    $("controls").hidden = !!(r && r.grid);
    if (!r) {
      fillControls();
      $("heatmap").appendChild(el("p", "empty", DATA.mode !== "live" ? "No sentences." :
        IMAGE_MODEL ? "Choose an image." : "Type a sentence and press Translate."));
      return;
    }
    if (state.h >= r.hyps.length) state.h = 0;
    var hy = hyp();
    $("translation").textContent = hy.text;
    r.hyps.forEach(function (h, k) {
      var li = el("li", k === state.h ? "selected" : "");
      li.appendChild(el("span", "score", h.score === null ? "\u2013" : Number(h.score).toFixed(3)));
      li.appendChild(el("span", "text", h.text));
      li.addEventListener("click", function () { state.h = k; render(); });
      nb.appendChild(li);
    });
    $("nbest-box").hidden = r.hyps.length < 2;
    fillControls();
    if (r.grid) { // an image model's record: each output symbol's attention over the picture
      state.view = null;
      $("col-name").textContent = "";
      tokenLine($("output"), hy.tgt_tokens, "row-tok", "data-i");
      ATTENDO_IMAGES.draw($("heatmap"), r, hy, state.pictures[state.s] || null);
      return;
    }
    var v = state.view = currentView();
    showLinksBox(v);
    if (!v) {
      $("heatmap").appendChild(el("p", "empty", !r.src_tokens.length ? "Empty input." : "No attention for this sentence (the model returns none, or it was not asked for)."));
      return;
    }
    $("row-name").textContent = v.rowName;
    $("col-name").textContent = v.colName;
    tokenLine($("output"), v.rows, "row-tok", "data-i");
    tokenLine($("source"), v.cols, "col-tok", "data-j");
    $("view-note").textContent = v.note;
    drawHeatmap(v);
  }

  // ------------------------------------------------------------------ hover

  function clearHighlight() {
    document.querySelectorAll(".tok.hl, .tok.active, .tok[style]").forEach(function (t) {
      t.classList.remove("hl", "active");
      t.style.backgroundColor = "";
    });
    showCoverage(null);
  }

  // weights: one per token of the other side; the strongest is highlighted most
  function highlight(selector, attr, weights) {
    var mx = Math.max.apply(null, weights.concat([1e-9]));
    document.querySelectorAll(selector).forEach(function (t) {
      var w = weights[Number(t.getAttribute(attr))] / mx;
      t.style.backgroundColor = w > 0.02 ? "rgba(232,115,12," + (0.1 + 0.8 * w).toFixed(3) + ")" : "";
      t.classList.toggle("hl", w >= 0.5);
    });
  }

  function mark(selector) {
    document.querySelectorAll(selector).forEach(function (t) { t.classList.add("active"); });
  }

  function onOver(ev) {
    var v = state.view;
    if (!v) return;
    var t = ev.target.closest("[data-i], [data-j]");
    if (!t || !t.closest("#heatmap, #tokens")) return;
    clearHighlight();
    var i = t.getAttribute("data-i"), j = t.getAttribute("data-j");
    if (i !== null) { // an output (row) token or a cell: what did output i attend to?
      highlight(".tok.col-tok[data-j]", "data-j", v.m[Number(i)]);
      mark('.tok.row-tok[data-i="' + i + '"]');
      if (v.coverage) showCoverage(Number(i));
      if (j !== null) mark('.tok.col-tok[data-j="' + j + '"]');
    } else { // a source (column) token: which outputs attended to it?
      highlight(".tok.row-tok[data-i]", "data-i", v.m.map(function (row) { return row[Number(j)]; }));
      mark('.tok.col-tok[data-j="' + j + '"]');
    }
  }

  document.addEventListener("mouseover", onOver);
  ["heatmap", "tokens"].forEach(function (id) { $(id).addEventListener("mouseleave", clearHighlight); });
  $("kind").addEventListener("change", function (e) { state.kind = e.target.value; state.layer = state.head = ""; render(); });
  $("layer").addEventListener("change", function (e) { state.layer = e.target.value; render(); });
  $("head").addEventListener("change", function (e) { state.head = e.target.value; render(); });
  $("show-links").addEventListener("change", function (e) { state.showLinks = e.target.checked; render(); });

  // ------------------------------------------------------------------ model line, live mode

  function showModel(m) {
    if (!m) return;
    var parts = [m.name, m.encoder + " encoder", m.decoder + " decoder"];
    if (m.attention) parts.push(m.attention + " attention");
    if (m.layers) parts.push(m.layers + " layers \u00d7 " + m.heads + " heads");
    $("model").textContent = parts.filter(Boolean).join(" \u00b7 ");
  }

  function setStatus(text, error) {
    var s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!error);
  }

  function translate(ev) {
    if (ev) ev.preventDefault();
    var beam = Math.max(1, Number($("beam").value) || 1);
    var request = { beam: beam, n_best: Math.min(beam, 5), return_attention: true };
    if (IMAGE_MODEL) { // the chosen files, as base64
      var files = $("image-input").files;
      if (!files || !files.length) { setStatus("Choose an image first.", true); return; }
      ATTENDO_IMAGES.readFiles(files).then(function (pics) {
        request.image = pics.map(function (p) { return p.base64; });
        post(request, pics.map(function (p) { return p.url; }), pics.length, "image");
      }, function (err) { setStatus("cannot read the file: " + err, true); });
      return;
    }
    var lines = $("input").value.split("\n").map(function (x) { return x.trim(); })
      .filter(function (x) { return x.length; });
    if (!lines.length) { setStatus("Type a sentence first.", true); return; }
    request.text = lines;
    request.alignment = true;
    post(request, [], lines.length, "sentence");
  }

  // POST /translate and show the answer; pictures: the images sent (image model)
  function post(request, pictures, n, noun) {
    var t0 = performance.now();
    setStatus("translating\u2026");
    $("submit").disabled = true;
    fetch("translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    }).then(function (resp) {
      return resp.json().then(function (body) { return { ok: resp.ok, body: body }; });
    }).then(function (res) {
      if (!res.ok) { setStatus(res.body.error || "request failed", true); return; }
      state.sentences = res.body.translations;
      state.pictures = pictures;
      state.s = state.h = 0;
      render();
      setStatus(n + " " + noun + (n > 1 ? "s" : "") + " in " +
        Math.round(performance.now() - t0) + " ms");
    }).catch(function (err) {
      setStatus("request failed: " + err, true);
    }).then(function () { $("submit").disabled = false; });
  }

  if (DATA.mode === "live") {
    $("form").hidden = false;
    $("form").addEventListener("submit", translate);
    $("input").hidden = IMAGE_MODEL;
    $("image-input").hidden = !IMAGE_MODEL;
    $("image-input").addEventListener("change", function () { translate(null); });
    fetch("health").then(function (r) { return r.json(); })
      .then(function (h) { showModel(h.model); }).catch(function () {});
  }
  showModel(DATA.model);
  render();
})();
