// atlas site search: offline (file://) search over unit ids, labels and top words.
// search/index.js (the manifest) lists one script per layer; each adds its index to ATLAS_SEARCH.shards.
// The ranking is atlas/searchindex.py's: a query token matches an index token exactly or as a prefix
// (binary search in the sorted token list); a posting (unit * 16 + code) weighs 1 / (1 + rank), halved for a
// top word (code >= 8) and halved again for a prefix match; a unit's score is the mean over query tokens of its
// best posting; a query naming a unit (model/layer/unit, layer/unit, unit number) gives that unit 1.
(function () {
  "use strict";
  var S = window.ATLAS_SEARCH = window.ATLAS_SEARCH || {shards: {}, manifest: null};
  var WORD_WEIGHT = 0.5, PREFIX_WEIGHT = 0.5;

  function tokens(text) { return text.toLowerCase().match(/[a-z0-9]+/g) || []; }

  function lowerBound(arr, q) {
    var lo = 0, hi = arr.length;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (arr[mid] < q) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function idMatch(q, shard) {
    var prefixes = [shard.model + "/" + shard.layer + "/", shard.layer + "/", ""];
    for (var i = 0; i < prefixes.length; i++) {
      var p = prefixes[i];
      if (q.lastIndexOf(p, 0) === 0 && /^[0-9]+$/.test(q.slice(p.length))) {
        var u = parseInt(q.slice(p.length), 10);
        return u < shard.units ? u : -1;
      }
    }
    return -1;
  }

  function scoreShard(shard, query) {
    var qt = tokens(query), U = shard.units, score = new Float64Array(U), best = new Float64Array(U);
    var toks = shard.tokens, post = shard.post;
    for (var k = 0; k < qt.length; k++) {
      var q = qt[k];
      best.fill(0);
      for (var i = lowerBound(toks, q); i < toks.length && toks[i].lastIndexOf(q, 0) === 0; i++) {
        var exact = toks[i] === q ? 1 : PREFIX_WEIGHT, p = post[i];
        for (var j = 0; j < p.length; j++) {
          var code = p[j] & 15, u = p[j] >> 4;
          var w = (code >= 8 ? WORD_WEIGHT : 1) / (1 + (code & 7)) * exact;
          if (w > best[u]) best[u] = w;
        }
      }
      for (var u2 = 0; u2 < U; u2++) score[u2] += best[u2] / qt.length;
    }
    var named = idMatch(query.trim(), shard);
    if (named >= 0 && score[named] < 1) score[named] = 1;
    return score;
  }

  // the ``limit`` best units over every loaded shard, best first: [{key, unit, score, text}]
  S.query = function (query, limit) {
    var top = [];
    var keys = S.manifest ? S.manifest.shards.map(function (s) { return s.key; }) : Object.keys(S.shards);
    keys.forEach(function (key, order) {
      var shard = S.shards[key];
      if (!shard) return;
      var score = scoreShard(shard, query);
      for (var u = 0; u < score.length; u++) {
        var s = score[u];
        if (s <= 0 || (top.length === limit && s <= top[top.length - 1].score)) continue;
        var hit = {key: key, unit: u, score: s, text: shard.text[u]};
        var at = top.length;
        while (at > 0 && top[at - 1].score < s) at--;
        top.splice(at, 0, hit);
        if (top.length > limit) top.pop();
      }
    });
    return top;
  };

  var box = document.getElementById("search-box");
  if (!box || !S.manifest) return;
  var list = document.getElementById("search-results"), status = document.getElementById("search-status");
  var pending = 0, requested = false;

  function render() {
    var q = box.value.trim();
    while (list.firstChild) list.removeChild(list.firstChild);
    if (!q) { status.textContent = ""; return; }
    if (pending) { status.textContent = "loading the index…"; return; }
    var t0 = performance.now(), hits = S.query(q, 20), took = performance.now() - t0;
    status.textContent = hits.length + (hits.length === 20 ? "+" : "") + " units (" + took.toFixed(1) + " ms)";
    hits.forEach(function (h) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.href = h.key + "/" + h.unit + ".html";
      a.textContent = h.key + "/" + h.unit;
      li.appendChild(a);
      var span = document.createElement("span");
      span.textContent = " " + h.score.toFixed(2) + (h.text ? " · " + h.text : "");
      li.appendChild(span);
      list.appendChild(li);
    });
  }

  function load() {
    if (requested) return;
    requested = true;
    S.manifest.shards.forEach(function (s) {
      if (S.shards[s.key]) return;
      pending++;
      var el = document.createElement("script");
      el.src = s.src;
      el.onload = el.onerror = function () { pending--; if (!pending) render(); };
      document.body.appendChild(el);
    });
    if (!pending) render();
  }

  box.addEventListener("focus", load);
  box.addEventListener("input", function () { load(); render(); });
})();
