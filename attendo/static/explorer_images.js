// attendo explorer, image models: read uploaded files as base64 and draw each output symbol's
// attention over the picture (a record's "grid": see attendo.server's module docstring).
var ATTENDO_IMAGES = (function () {
  "use strict";

  var HEIGHT = 96, MAX_WIDTH = 560; // display size of a panel, CSS pixels
  var COLOR = [232, 115, 12]; // the page's accent; alpha grows with the weight

  function base64(buffer) {
    var bytes = new Uint8Array(buffer), parts = [], step = 0x8000;
    for (var i = 0; i < bytes.length; i += step) {
      parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + step)));
    }
    return btoa(parts.join(""));
  }

  // files (a FileList or an array) -> Promise of [{base64, url}] in order (url: a data URI of
  // the file, to draw it; the page loads nothing from elsewhere)
  function readFiles(files) {
    return Promise.all(Array.prototype.map.call(files, function (file) {
      return new Promise(function (resolve, reject) {
        var reader = new FileReader();
        reader.onload = function () {
          var b64 = base64(reader.result);
          resolve({ base64: b64, url: "data:" + (file.type || "image/png") + ";base64," + b64 });
        };
        reader.onerror = function () { reject(reader.error || new Error(file.name)); };
        reader.readAsArrayBuffer(file);
      });
    }));
  }

  // one attention row -> a canvas of cols x rows pixels, a region each (column by column)
  function overlay(row, grid) {
    var R = grid.rows, C = grid.cols, c = document.createElement("canvas");
    c.width = C; c.height = R;
    var ctx = c.getContext("2d"), img = ctx.createImageData(C, R);
    var mx = Math.max.apply(null, row.concat([1e-9]));
    row.forEach(function (w, k) {
      var r = k % R, col = Math.floor(k / R), p = 4 * (r * C + col), x = Math.max(0, w) / mx;
      img.data[p] = COLOR[0]; img.data[p + 1] = COLOR[1]; img.data[p + 2] = COLOR[2];
      img.data[p + 3] = Math.round(255 * 0.8 * x);
    });
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function panel(row, token, grid, picture, size) {
    var fig = document.createElement("figure"), canvas = document.createElement("canvas");
    fig.className = "image-panel";
    canvas.className = "attn-canvas";
    canvas.width = size[0]; canvas.height = size[1];
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size[0], size[1]);
    if (picture) ctx.drawImage(picture, 0, 0, size[0], size[1]);
    // region (r, c) covers model pixels [r*h, r*h + h) x [c*w, c*w + w) of pixels [H, W]
    var sx = size[0] / grid.pixels[1], sy = size[1] / grid.pixels[0];
    ctx.imageSmoothingEnabled = true; // upsampled bilinearly
    ctx.drawImage(overlay(row, grid), 0, 0, grid.cols * grid.cell[1] * sx,
      grid.rows * grid.cell[0] * sy);
    var caption = document.createElement("figcaption");
    caption.textContent = token.charAt(0) === "\u2581" && token.length > 1 ? token.slice(1) : token;
    fig.appendChild(canvas);
    fig.appendChild(caption);
    return fig;
  }

  // the panels of a hypothesis of an image record into box; src: the picture's URL or null
  function draw(box, rec, hyp, src) {
    box.textContent = "";
    var attn = hyp.attention, grid = rec.grid;
    if (!attn || !attn.length || !grid) {
      var p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No attention for this image (the model returns none, or it was not asked for).";
      box.appendChild(p);
      return;
    }
    var wrap = document.createElement("div");
    wrap.className = "image-panels";
    box.appendChild(wrap);
    function paint(picture) {
      var w = picture ? picture.naturalWidth : grid.pixels[1];
      var h = picture ? picture.naturalHeight : grid.pixels[0];
      var scale = Math.min(HEIGHT / h, MAX_WIDTH / w);
      var size = [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
      attn.forEach(function (row, i) {
        wrap.appendChild(panel(row, hyp.tgt_tokens[i], grid, picture, size));
      });
    }
    if (!src) { paint(null); return; }
    var picture = new Image();
    picture.onload = function () { paint(picture); };
    picture.onerror = function () { paint(null); };
    picture.src = src;
  }

  return { readFiles: readFiles, draw: draw };
})();
