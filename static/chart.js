/* The training chart: uPlot (vendored in dist/vendor/uplot) drawn from a plain spec that the
 * page's Python builds (loralab.app.chart): the steps, each series' values and how to draw it.
 * All the choices (which series, smoothing, overlays, scales) are made in Python; this file only
 * maps the spec onto uPlot's options, follows the box's width, and keeps the zoom across updates.
 */
"use strict";
window.loralabChart = (() => {
  const plots = new WeakMap();  // host element -> {plot, key, first, last}
  const watched = new WeakSet();
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const dot = () => null;  // a series drawn as points only
  const options = (spec, width) => {
    const muted = css("--muted"), line = css("--line");
    const axis = (extra) => ({stroke: muted, grid: {stroke: line, width: 1}, ticks: {stroke: line, width: 1},
                              font: "12px system-ui, sans-serif", labelFont: "12px system-ui, sans-serif", ...extra});
    return {
      width, height: spec.height,
      scales: {x: {time: false}, y: spec.log ? {distr: 3} : {}, lr: {}},
      cursor: {drag: {x: true, y: false}},  // drag across to zoom, double-click to zoom out
      legend: {live: true},
      axes: [axis({label: "step"}), axis({label: spec.log ? "loss (log)" : "loss", scale: "y"}),
             axis({label: "learning rate", scale: "lr", side: 1, grid: {show: false}, size: 64})],
      series: [{label: "step"}, ...spec.series.map((s) => ({
        label: s.label, scale: s.axis, stroke: s.color || css(s.css || "--accent"), width: s.width || 1.5,
        dash: s.dash || undefined, spanGaps: true,
        ...(s.points_only ? {paths: dot, points: {show: true, size: 7, fill: s.color || css(s.css)}} : {points: {show: false}}),
        ...(s.notes ? {value: (u, v, si, i) => (i != null && s.notes[i]) || "–"} : {}),  // (the readout is the text)
      }))],
    };
  };
  const draw = (host, json) => {
    const spec = JSON.parse(json);
    const data = [spec.x, ...spec.series.map((s) => s.data)];
    const key = JSON.stringify([spec.log, spec.height, spec.series.map((s) => [s.label, s.axis, s.points_only])]);
    const width = Math.max(200, host.clientWidth);
    let held = plots.get(host);
    if (!spec.x.length) {
      if (held) held.plot.destroy();
      plots.delete(host);
      host.replaceChildren();
      return;
    }
    if (!held || held.key !== key) {
      if (held) held.plot.destroy();
      host.replaceChildren();
      held = {plot: new uPlot(options(spec, width), data, host), key};
      plots.set(host, held);
      if (!watched.has(host)) {
        watched.add(host);
        new ResizeObserver(() => {
          const now = plots.get(host);
          if (now && host.clientWidth) now.plot.setSize({width: Math.max(200, host.clientWidth), height: now.plot.height});
        }).observe(host);
      }
    } else {
      const sx = held.plot.scales.x;  // zoomed in: keep the view while new steps arrive
      const zoomed = sx.min > held.first + 1e-9 || sx.max < held.last - 1e-9;
      held.plot.setData(data, !zoomed);
    }
    held.first = spec.x[0];
    held.last = spec.x[spec.x.length - 1];
  };
  return {draw};
})();
