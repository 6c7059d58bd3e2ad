/* Draws the page's charts: Plotly figures embedded as JSON in #chart-data, keyed by element id. */
(function () {
  "use strict";

  var source = document.getElementById("chart-data");
  if (!source || !window.Plotly) {
    return;
  }
  var figures = JSON.parse(source.textContent);
  var narrow = window.matchMedia("(max-width: 640px)").matches;

  var base = {
    autosize: true,
    margin: { l: 56, r: 16, t: 16, b: 40 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: narrow ? 11 : 13 },
    separators: ".,"
  };
  var config = {
    responsive: true,
    // On a touch screen the toolbar only hides the chart; elsewhere it shows on hover.
    displayModeBar: narrow ? false : "hover",
    displaylogo: false,
    toImageButtonOptions: { format: "png", scale: 2 }
  };

  Object.keys(figures).forEach(function (id) {
    var element = document.getElementById(id);
    if (!element) {
      return;
    }
    var figure = figures[id];
    var layout = Object.assign({}, base, figure.layout);
    layout.margin = Object.assign({}, base.margin, figure.layout.margin);
    window.Plotly.newPlot(element, figure.data, layout, config);
  });
})();
