// The page's 3D view (WebGL): Gaussian splats from an INRIA-layout PLY (the run's point_cloud.ply, or the
// live splats of a training run), meshes from a PLY with faces (the --export model.ply) or from an OBJ
// (threestudio's exporters: vertex colours, or a texture mapped per pixel by the UVs, or the MTL's Kd),
// plain coloured points.
// Splats are drawn as screen-space Gaussians, sorted back to front (a counting sort on depth) and
// composited with premultiplied alpha; meshes with a headlight (a textured OBJ's texture sampled per pixel).
// Drag to orbit, wheel to zoom, double-click to reset. z is up, as in threestudio's world. A reload with
// { keepCamera: true } (the live splats of a training run) keeps the camera the user has set; the first load
// of a view fits it.
"use strict";
(function () {
  const SH_C0 = 0.28209479177387814;
  const TYPES = {
    char: ["getInt8", 1], int8: ["getInt8", 1], uchar: ["getUint8", 1], uint8: ["getUint8", 1],
    short: ["getInt16", 2], int16: ["getInt16", 2], ushort: ["getUint16", 2], uint16: ["getUint16", 2],
    int: ["getInt32", 4], int32: ["getInt32", 4], uint: ["getUint32", 4], uint32: ["getUint32", 4],
    float: ["getFloat32", 4], float32: ["getFloat32", 4], double: ["getFloat64", 8], float64: ["getFloat64", 8],
  };

  // ---- PLY (binary little-endian, as plyfile and trimesh write it) ----
  function parsePly(buffer) {
    const bytes = new Uint8Array(buffer);
    const marker = "end_header";
    let end = -1;
    const limit = Math.min(bytes.length, 1 << 16);
    const head = new TextDecoder("ascii").decode(bytes.subarray(0, limit));
    const at = head.indexOf(marker);
    if (!head.startsWith("ply") || at < 0) throw new Error("not a PLY file");
    end = at + marker.length;
    while (end < bytes.length && bytes[end] !== 10) end++;
    end++;
    const elements = [];
    let format = "";
    for (const line of head.slice(0, at).split(/\r?\n/)) {
      const w = line.trim().split(/\s+/);
      if (w[0] === "format") format = w[1];
      else if (w[0] === "element") elements.push({ name: w[1], count: parseInt(w[2], 10), props: [] });
      else if (w[0] === "property" && elements.length) {
        const el = elements[elements.length - 1];
        if (w[1] === "list") el.props.push({ name: w[4], list: true, countType: w[2], type: w[3] });
        else el.props.push({ name: w[2], type: w[1] });
      }
    }
    if (format !== "binary_little_endian") throw new Error("PLY format " + format + " is not shown here");
    const view = new DataView(buffer);
    let offset = end;
    const out = {};
    for (const el of elements) {
      const data = {};
      if (el.props.every((p) => !p.list)) {
        let stride = 0;
        const offs = el.props.map((p) => { const o = stride; stride += TYPES[p.type][1]; return o; });
        el.props.forEach((p, k) => {
          const col = new Float32Array(el.count);
          const getter = TYPES[p.type][0];
          for (let i = 0, o = offset + offs[k]; i < el.count; i++, o += stride) col[i] = view[getter](o, true);
          data[p.name] = col;
        });
        offset += stride * el.count;
      } else {
        const tris = [];
        for (let i = 0; i < el.count; i++) {
          for (const p of el.props) {
            if (p.list) {
              const [cg, cs] = TYPES[p.countType];
              const n = view[cg](offset, true); offset += cs;
              const [g, s] = TYPES[p.type];
              const idx = [];
              for (let k = 0; k < n; k++) { idx.push(view[g](offset, true)); offset += s; }
              if (p.name === "vertex_indices" || p.name === "vertex_index") {
                for (let k = 1; k + 1 < n; k++) tris.push(idx[0], idx[k], idx[k + 1]);
              }
            } else {
              offset += TYPES[p.type][1];
            }
          }
        }
        data.triangles = new Uint32Array(tris);
      }
      out[el.name] = data;
    }
    return out;
  }

  // ---- OBJ (Wavefront text, as threestudio's save_obj and trimesh write it) ----
  // "v x y z [r g b]", "vt u [v]", "vn ...", "f" with a, a/b, a//c, a/b/c or a/b/ corners (1-based; negative:
  // counted back from the newest), polygons fanned into triangles; comments and other lines are skipped.
  // A corner is a (vertex, UV) pair, so a UV seam splits a vertex; normals are computed per position (smooth
  // across seams), the file's own vn only checked. Returns positions and triangles of the corners, the
  // source position of each (`source`), the vertex colours when every v line has them, and the UVs.
  function parseObj(text) {
    const pos = [], rgb = [], uv = [], tris = [], corner = [], cornerUv = [];
    const seen = new Map();
    let normals = 0, allColoured = true, maxPositive = -1, line = 0;
    const fail = (what) => { throw new Error(`OBJ line ${line}: ${what}`); };
    const index = (token, count, what) => {
      const i = Number(token);
      if (!Number.isInteger(i) || i === 0) fail(`bad ${what} index "${token}"`);
      if (i > 0) return i - 1;  // checked at the end (a file may name a vertex before its v line)
      if (count + i < 0) fail(`${what} index ${i} points before the first ${what}`);
      return count + i;
    };
    for (const raw of text.split("\n")) {
      line++;
      const hash = raw.indexOf("#");
      const w = (hash >= 0 ? raw.slice(0, hash) : raw).trim().split(/\s+/);
      const key = w[0];
      if (key === "v") {
        const x = Number(w[1]), y = Number(w[2]), z = Number(w[3]);
        if (!Number.isFinite(x) || !Number.isFinite(y) || !Number.isFinite(z)) fail("a vertex needs three numbers");
        pos.push(x, y, z);
        const r = Number(w[4]), g = Number(w[5]), b = Number(w[6]);
        if (w.length >= 7 && Number.isFinite(r) && Number.isFinite(g) && Number.isFinite(b)) rgb.push(r, g, b);
        else allColoured = false;
      } else if (key === "vt") {
        const u = Number(w[1]), v = w.length > 2 ? Number(w[2]) : 0;
        uv.push(Number.isFinite(u) ? u : 0, Number.isFinite(v) ? v : 0);
      } else if (key === "vn") {
        normals++;
      } else if (key === "f") {
        const ids = [];
        for (let k = 1; k < w.length; k++) {
          const parts = w[k].split("/");
          const vi = index(parts[0], pos.length / 3, "vertex");
          const ti = parts.length > 1 && parts[1] !== "" ? index(parts[1], uv.length / 2, "texture coordinate") : -1;
          if (parts.length > 2 && parts[2] !== "") {
            const ni = index(parts[2], normals, "normal");
            if (ni >= normals) fail(`normal index ${parts[2]} is past the last normal`);
          }
          if (ti >= uv.length / 2) fail(`texture coordinate index ${parts[1]} is past the last one`);
          maxPositive = Math.max(maxPositive, vi);
          const id = vi * 67108864 + ti + 1;  // one output vertex per (vertex, UV) pair
          let at = seen.get(id);
          if (at === undefined) { at = corner.length; seen.set(id, at); corner.push(vi); cornerUv.push(ti); }
          ids.push(at);
        }
        for (let k = 1; k + 1 < ids.length; k++) tris.push(ids[0], ids[k], ids[k + 1]);
      }
    }
    const n = pos.length / 3;
    if (!n) throw new Error("the OBJ has no vertices");
    if (maxPositive >= n) throw new Error(`the OBJ names vertex ${maxPositive + 1} but has ${n}`);
    if (!tris.length) throw new Error("the OBJ has no faces");
    const m = corner.length;
    const positions = new Float32Array(3 * m), uvs = new Float32Array(2 * m);
    let hasUv = false;
    for (let i = 0; i < m; i++) {
      const p = 3 * corner[i];
      positions[3 * i] = pos[p]; positions[3 * i + 1] = pos[p + 1]; positions[3 * i + 2] = pos[p + 2];
      if (cornerUv[i] >= 0) { hasUv = true; uvs[2 * i] = uv[2 * cornerUv[i]]; uvs[2 * i + 1] = uv[2 * cornerUv[i] + 1]; }
    }
    let colors = null;
    if (allColoured && rgb.length === 3 * n) {
      let top = 0;
      for (const c of rgb) if (c > top) top = c;
      const k = top > 1 ? 1 / 255 : 1;  // 0-1 floats (threestudio), or 0-255
      colors = new Float32Array(3 * m);
      for (let i = 0; i < m; i++) for (let c = 0; c < 3; c++) colors[3 * i + c] = Math.min(1, Math.max(0, rgb[3 * corner[i] + c] * k));
    }
    return { positions, triangles: new Uint32Array(tris), source: Uint32Array.from(corner), sources: n,
      colors, uvs: hasUv ? uvs : null, vertices: n };
  }

  // The colour of an image ({width, height, data: RGBA bytes}, e.g. ImageData) at (u, v), bilinear, repeating;
  // v = 0 is the image's bottom row (the OBJ convention; threestudio writes 1 - v for it).
  function sampleImage(image, u, v, out, at) {
    const W = image.width, H = image.height, d = image.data;
    const wrap = (t) => (t >= 0 && t <= 1 ? t : t - Math.floor(t));
    const x = wrap(u) * (W - 1), y = (1 - wrap(v)) * (H - 1);
    const x0 = Math.floor(x), y0 = Math.floor(y), x1 = Math.min(W - 1, x0 + 1), y1 = Math.min(H - 1, y0 + 1);
    const fx = x - x0, fy = y - y0;
    for (let c = 0; c < 3; c++) {
      const top = d[4 * (y0 * W + x0) + c] * (1 - fx) + d[4 * (y0 * W + x1) + c] * fx;
      const bottom = d[4 * (y1 * W + x0) + c] * (1 - fx) + d[4 * (y1 * W + x1) + c] * fx;
      out[at + c] = (top * (1 - fy) + bottom * fy) / 255;
    }
  }

  // ---- small matrix helpers (column-major, as WebGL wants) ----
  function perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0]);
  }
  function lookAt(eye, target, up) {
    const z = norm(sub(eye, target)), x = norm(cross(up, z)), y = cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
  }
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const norm = (a) => { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; };

  function quantile(values, q) {
    const s = Float32Array.from(values).sort();
    return s.length ? s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] : 0;
  }

  const SPLAT_VS = `
    attribute vec3 position; attribute vec4 color; attribute float radius;
    uniform mat4 view; uniform mat4 proj; uniform float focal; uniform float maxSize;
    varying vec4 vColor;
    void main() {
      vec4 p = view * vec4(position, 1.0);
      gl_Position = proj * p;
      gl_PointSize = clamp(2.0 * radius * focal / max(-p.z, 1e-3), 1.5, maxSize);
      vColor = color;
    }`;
  const SPLAT_FS = `
    precision mediump float; varying vec4 vColor;
    void main() {
      vec2 d = gl_PointCoord * 2.0 - 1.0;
      float r2 = dot(d, d);
      if (r2 > 1.0) discard;
      float a = vColor.a * exp(-4.5 * r2);
      gl_FragColor = vec4(vColor.rgb * a, a);
    }`;
  // Meshes, with a headlight: per-vertex colours, or (TEXTURED, a textured OBJ) the UV interpolated per pixel
  // and the texture sampled there. OBJ's v = 0 is the image's bottom row and the texture is uploaded top row
  // first, hence 1 - v. highp where the GPU has it: a mediump (16-bit) UV is off by half a texel of a
  // 2048-pixel texture. Both programs are compiled from these sources, TEXTURED defined for the second.
  const MESH_VS = `
    attribute vec3 position; attribute vec3 normal;
    #ifdef TEXTURED
    attribute vec2 uv; varying vec2 vUv;
    #else
    attribute vec3 color; varying vec3 vColor;
    #endif
    uniform mat4 view; uniform mat4 proj; varying vec3 vNormal;
    void main() {
      vNormal = mat3(view) * normal;
    #ifdef TEXTURED
      vUv = uv;
    #else
      vColor = color;
    #endif
      gl_Position = proj * view * vec4(position, 1.0);
    }`;
  const MESH_FS = `
    #if defined(TEXTURED) && defined(GL_FRAGMENT_PRECISION_HIGH)
    precision highp float;
    #else
    precision mediump float;
    #endif
    varying vec3 vNormal;
    #ifdef TEXTURED
    uniform sampler2D map; varying vec2 vUv;
    #else
    varying vec3 vColor;
    #endif
    void main() {
    #ifdef TEXTURED
      vec3 c = texture2D(map, vec2(vUv.x, 1.0 - vUv.y)).rgb;
    #else
      vec3 c = vColor;
    #endif
      float l = abs(normalize(vNormal).z);
      gl_FragColor = vec4(c * (0.35 + 0.65 * l), 1.0);
    }`;
  const TEXTURED = "#define TEXTURED\n";

  class View3D {
    constructor(canvas) {
      this.canvas = canvas;
      const gl = canvas.getContext("webgl", { premultipliedAlpha: false, antialias: true });
      if (!gl) throw new Error("WebGL is not available in this browser");
      this.gl = gl;
      this.uint = gl.getExtension("OES_element_index_uint");
      this.splatProgram = this.program(SPLAT_VS, SPLAT_FS);
      this.meshProgram = this.program(MESH_VS, MESH_FS);
      this.texturedProgram = this.program(TEXTURED + MESH_VS, TEXTURED + MESH_FS);
      this.maxTexture = gl.getParameter(gl.MAX_TEXTURE_SIZE);
      this.texture = null;  // the WebGL texture of a textured OBJ, else null
      this.kind = null;
      this.fitted = false;  // the camera was set (fitted, then maybe moved): a keepCamera load keeps it
      canvas.lucidView = this;  // for the page's tests and the browser console
      this.az = 0.6; this.el = 0.35; this.dist = 3; this.target = [0, 0, 0]; this.fovy = 0.7;
      this.pointRange = gl.getParameter(gl.ALIASED_POINT_SIZE_RANGE);
      this.bindControls();
      this.draw();
    }

    program(vs, fs) {
      const gl = this.gl;
      const p = gl.createProgram();
      for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
        const s = gl.createShader(type);
        gl.shaderSource(s, src); gl.compileShader(s);
        if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
        gl.attachShader(p, s);
      }
      gl.linkProgram(p);
      if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
      return p;
    }

    buffer(data, target) {
      const gl = this.gl, b = gl.createBuffer();
      gl.bindBuffer(target || gl.ARRAY_BUFFER, b);
      gl.bufferData(target || gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      return b;
    }

    bindControls() {
      let last = null;
      const c = this.canvas;
      c.addEventListener("pointerdown", (e) => { last = [e.clientX, e.clientY]; c.setPointerCapture(e.pointerId); });
      c.addEventListener("pointerup", () => { last = null; this.sortAndDraw(); });
      c.addEventListener("pointermove", (e) => {
        if (!last) return;
        this.az -= (e.clientX - last[0]) * 0.01;
        this.el = Math.max(-1.5, Math.min(1.5, this.el + (e.clientY - last[1]) * 0.01));
        last = [e.clientX, e.clientY];
        this.draw();
      });
      c.addEventListener("wheel", (e) => { e.preventDefault(); this.dist *= Math.exp(e.deltaY * 0.001); this.sortAndDraw(); }, { passive: false });
      c.addEventListener("dblclick", () => { this.fit(); this.sortAndDraw(); });
    }

    // Load a PLY (ArrayBuffer): splats when it has f_dc_0/opacity, a mesh when it has faces, else points.
    // options.keepCamera: keep the current camera (when one was set) instead of fitting the new content.
    load(buffer, options) {
      const ply = parsePly(buffer);
      const v = ply.vertex;
      if (!v || !v.x) throw new Error("the PLY has no vertices");
      const n = v.x.length;
      const pos = new Float32Array(n * 3);
      for (let i = 0; i < n; i++) { pos[3 * i] = v.x[i]; pos[3 * i + 1] = v.y[i]; pos[3 * i + 2] = v.z[i]; }
      const faces = ply.face && ply.face.triangles && ply.face.triangles.length ? ply.face.triangles : null;
      this.release();
      this.positions = pos; this.count = n;
      if (faces) this.loadMesh(v, faces);
      else this.loadSplats(v);
      this.show(options);
      return { kind: this.kind, count: n, faces: faces ? faces.length / 3 : 0 };
    }

    // Load an OBJ (its text) as a mesh. Its colour: the vertex colours of its v lines, else options.texture
    // (the MTL's map_Kd as ImageData) mapped per pixel by the UVs, else options.kd (the MTL's Kd), else grey.
    // A texture larger than the GPU takes (MAX_TEXTURE_SIZE) is sampled at each vertex's UV instead.
    // Throws (and keeps what was shown) when the text is not a mesh.
    loadObj(text, options) {
      const obj = parseObj(text);
      const m = obj.positions.length / 3;
      let colors = obj.colors, colour = "vertex colours", mapped = false;
      const texture = options && options.texture, kd = options && options.kd;
      if (!colors && texture && obj.uvs) {
        colour = "texture";
        mapped = texture.width > 0 && texture.height > 0 &&
          texture.width <= this.maxTexture && texture.height <= this.maxTexture;
        if (!mapped) {
          colors = new Float32Array(3 * m);
          for (let i = 0; i < m; i++) sampleImage(texture, obj.uvs[2 * i], obj.uvs[2 * i + 1], colors, 3 * i);
        }
      } else if (!colors) {
        const rgb = kd && kd.length === 3 ? kd : [0.75, 0.75, 0.75];
        colour = kd && kd.length === 3 ? "Kd" : "grey";
        colors = new Float32Array(3 * m);
        for (let i = 0; i < 3 * m; i++) colors[i] = rgb[i % 3];
      }
      this.release();
      this.positions = obj.positions; this.count = m;
      this.setMesh(obj.triangles, colors, obj.source, obj.sources);
      if (mapped) this.setTexture(obj.uvs, texture);
      this.show(options);
      return { kind: this.kind, count: obj.vertices, faces: obj.triangles.length / 3, colour };
    }

    show(options) {
      if (!(options && options.keepCamera && this.fitted)) this.fit();
      this.sortAndDraw();
    }

    loadSplats(v) {
      const gl = this.gl, n = this.count;
      const color = new Float32Array(n * 4), radius = new Float32Array(n);
      const splat = v.f_dc_0 !== undefined;
      for (let i = 0; i < n; i++) {
        if (splat) {
          color[4 * i] = Math.min(1, Math.max(0, 0.5 + SH_C0 * v.f_dc_0[i]));
          color[4 * i + 1] = Math.min(1, Math.max(0, 0.5 + SH_C0 * v.f_dc_1[i]));
          color[4 * i + 2] = Math.min(1, Math.max(0, 0.5 + SH_C0 * v.f_dc_2[i]));
          color[4 * i + 3] = v.opacity ? 1 / (1 + Math.exp(-v.opacity[i])) : 1;
          radius[i] = v.scale_0 ? 3 * Math.exp(Math.max(v.scale_0[i], v.scale_1[i], v.scale_2[i])) : 0.01;  // 3 sigma
        } else {
          const k = v.red ? (v.red[0] > 1 || v.green[0] > 1 ? 1 / 255 : 1) : 0;
          color[4 * i] = v.red ? v.red[i] * k : 0.8; color[4 * i + 1] = v.green ? v.green[i] * k : 0.8;
          color[4 * i + 2] = v.blue ? v.blue[i] * k : 0.8; color[4 * i + 3] = 1; radius[i] = 0.01;
        }
      }
      this.kind = "splats";
      this.posBuf = this.buffer(this.positions);
      this.colorBuf = this.buffer(color);
      this.radiusBuf = this.buffer(radius);
      this.order = new Uint32Array(n);
      this.indexBuf = gl.createBuffer();
    }

    loadMesh(v, tris) {
      const n = this.count, color = new Float32Array(n * 3);
      const k = v.red ? (Math.max(...Array.from(v.red.subarray(0, Math.min(n, 1000)))) > 1 ? 1 / 255 : 1) : 0;
      for (let i = 0; i < n; i++) {
        color[3 * i] = v.red ? v.red[i] * k : 0.75; color[3 * i + 1] = v.green ? v.green[i] * k : 0.75;
        color[3 * i + 2] = v.blue ? v.blue[i] * k : 0.75;
      }
      this.setMesh(tris, color);
    }

    // this.positions / this.count as a mesh of `tris` with per-vertex `color` (null when setTexture follows).
    // Normals: the area-weighted face normals summed per vertex, or per source position when `source`
    // (vertex -> position, of `sources` positions) says which vertices are copies of one position (an OBJ's
    // UV seams).
    setMesh(tris, color, source, sources) {
      const n = this.count, pos = this.positions;
      const at = source || null, m = source ? sources : n;
      const sum = new Float32Array(m * 3);
      for (let t = 0; t < tris.length; t += 3) {
        const a = tris[t] * 3, b = tris[t + 1] * 3, c = tris[t + 2] * 3;
        const e1 = [pos[b] - pos[a], pos[b + 1] - pos[a + 1], pos[b + 2] - pos[a + 2]];
        const e2 = [pos[c] - pos[a], pos[c + 1] - pos[a + 1], pos[c + 2] - pos[a + 2]];
        const f = cross(e1, e2);
        for (let k = 0; k < 3; k++) {
          const i = 3 * (at ? at[tris[t + k]] : tris[t + k]);
          sum[i] += f[0]; sum[i + 1] += f[1]; sum[i + 2] += f[2];
        }
      }
      let normals = sum;
      if (at) {
        normals = new Float32Array(n * 3);
        for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) normals[3 * i + c] = sum[3 * at[i] + c];
      }
      this.kind = "mesh";
      this.posBuf = this.buffer(pos);
      this.normalBuf = this.buffer(normals);
      this.colorBuf = color ? this.buffer(color) : null;
      this.triangles = tris.length;
      this.indexBuf = this.buffer(tris, this.gl.ELEMENT_ARRAY_BUFFER);
    }

    // The mesh's UVs (2 per vertex) and its texture (`image`: {width, height, data: RGBA bytes}, e.g.
    // ImageData) for per-pixel mapping. WebGL1 repeats and mipmaps only power-of-two textures (threestudio
    // writes 1024 or 2048 squares): those repeat like sampleImage; others are clamped to the edge, unmipmapped.
    setTexture(uvs, image) {
      const gl = this.gl, w = image.width, h = image.height;
      const pot = (w & (w - 1)) === 0 && (h & (h - 1)) === 0;
      this.uvBuf = this.buffer(uvs);
      this.texture = gl.createTexture();
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, this.texture);
      const bytes = new Uint8Array(image.data.buffer, image.data.byteOffset, 4 * w * h);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, w, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, bytes);
      const wrap = pot ? gl.REPEAT : gl.CLAMP_TO_EDGE;
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, wrap);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, wrap);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, pot ? gl.LINEAR_MIPMAP_LINEAR : gl.LINEAR);
      if (pot) gl.generateMipmap(gl.TEXTURE_2D);
    }

    // the GPU buffers and texture of what is shown (a live view reloads every few seconds: nothing may pile up)
    release() {
      for (const name of ["posBuf", "colorBuf", "radiusBuf", "normalBuf", "uvBuf", "indexBuf"]) {
        if (this[name]) { this.gl.deleteBuffer(this[name]); this[name] = null; }
      }
      if (this.texture) { this.gl.deleteTexture(this.texture); this.texture = null; }
    }

    // empty the view; the next load fits the camera again
    clear() {
      this.release();
      this.kind = null; this.positions = null; this.count = 0; this.fitted = false;
      this.draw();
    }

    fit() {
      if (!this.positions) return;
      this.fitted = true;
      const n = this.count, p = this.positions;
      const step = Math.max(1, Math.floor(n / 20000));
      const xs = [], ys = [], zs = [];
      for (let i = 0; i < n; i += step) { xs.push(p[3 * i]); ys.push(p[3 * i + 1]); zs.push(p[3 * i + 2]); }
      this.target = [quantile(xs, 0.5), quantile(ys, 0.5), quantile(zs, 0.5)];
      const d = xs.map((x, i) => Math.hypot(x - this.target[0], ys[i] - this.target[1], zs[i] - this.target[2]));
      const r = Math.max(quantile(d, 0.97), 1e-3);
      this.dist = (1.25 * r) / Math.sin(this.fovy / 2);
      this.az = 0.6; this.el = 0.35;
    }

    eye() {
      const c = Math.cos(this.el);
      return [this.target[0] + this.dist * c * Math.cos(this.az), this.target[1] + this.dist * c * Math.sin(this.az),
        this.target[2] + this.dist * Math.sin(this.el)];
    }

    // back to front by view depth: a counting sort on 16-bit depth keys (O(n), fast enough per move)
    sort() {
      if (this.kind !== "splats") return;
      const n = this.count, p = this.positions, e = this.eye();
      const dir = norm(sub(this.target, e));
      const depth = new Float32Array(n);
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) {
        const d = (p[3 * i] - e[0]) * dir[0] + (p[3 * i + 1] - e[1]) * dir[1] + (p[3 * i + 2] - e[2]) * dir[2];
        depth[i] = d; if (d < lo) lo = d; if (d > hi) hi = d;
      }
      const buckets = 65536, scale = (buckets - 1) / Math.max(hi - lo, 1e-9);
      const counts = new Uint32Array(buckets), keys = new Uint16Array(n);
      for (let i = 0; i < n; i++) { const k = buckets - 1 - Math.floor((depth[i] - lo) * scale); keys[i] = k; counts[k]++; }
      for (let k = 1; k < buckets; k++) counts[k] += counts[k - 1];
      for (let i = n - 1; i >= 0; i--) this.order[--counts[keys[i]]] = i;
      const gl = this.gl;
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuf);
      gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, this.order, gl.DYNAMIC_DRAW);
    }

    sortAndDraw() { this.sort(); this.draw(); }

    // bind `buffer` to the program's attribute `name`; the draw disables it again (an array left enabled
    // with its buffer deleted would fail the next draw of another program)
    attrib(program, name, buffer, size) {
      const gl = this.gl, loc = gl.getAttribLocation(program, name);
      if (loc < 0) return;
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, size, gl.FLOAT, false, 0, 0);
      this.enabled.push(loc);
    }

    draw() {
      const gl = this.gl, c = this.canvas;
      gl.viewport(0, 0, c.width, c.height);
      gl.clearColor(0.17, 0.176, 0.192, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      if (!this.kind) return;
      const proj = perspective(this.fovy, c.width / c.height, this.dist * 0.01, this.dist * 100);
      const view = lookAt(this.eye(), this.target, [0, 0, 1]);
      const prog = this.kind === "splats" ? this.splatProgram : this.texture ? this.texturedProgram : this.meshProgram;
      this.enabled = [];
      gl.useProgram(prog);
      gl.uniformMatrix4fv(gl.getUniformLocation(prog, "view"), false, view);
      gl.uniformMatrix4fv(gl.getUniformLocation(prog, "proj"), false, proj);
      const indexType = this.uint ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT;
      if (this.kind === "splats") {
        gl.disable(gl.DEPTH_TEST);
        gl.enable(gl.BLEND);
        gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
        gl.uniform1f(gl.getUniformLocation(prog, "focal"), c.height / (2 * Math.tan(this.fovy / 2)));
        gl.uniform1f(gl.getUniformLocation(prog, "maxSize"), Math.min(256, this.pointRange[1]));
        this.attrib(prog, "position", this.posBuf, 3);
        this.attrib(prog, "color", this.colorBuf, 4);
        this.attrib(prog, "radius", this.radiusBuf, 1);
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuf);
        gl.drawElements(gl.POINTS, this.count, indexType, 0);
      } else {
        gl.disable(gl.BLEND);
        gl.enable(gl.DEPTH_TEST);
        this.attrib(prog, "position", this.posBuf, 3);
        this.attrib(prog, "normal", this.normalBuf, 3);
        if (this.texture) {
          this.attrib(prog, "uv", this.uvBuf, 2);
          gl.activeTexture(gl.TEXTURE0);
          gl.bindTexture(gl.TEXTURE_2D, this.texture);
          gl.uniform1i(gl.getUniformLocation(prog, "map"), 0);
        } else {
          this.attrib(prog, "color", this.colorBuf, 3);
        }
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuf);
        gl.drawElements(gl.TRIANGLES, this.triangles, indexType, 0);
      }
      for (const loc of this.enabled) gl.disableVertexAttribArray(loc);
    }
  }

  window.LucidViewer = { View3D, parsePly, parseObj, sampleImage };
})();
