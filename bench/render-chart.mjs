#!/usr/bin/env node
// Re-draws a run's chart from the data the run saved next to it:
//   node bench/render-chart.mjs bench/results/<date>.json      -> bench/results/<date>.svg
// For changes to the drawing (bench/lib/report.mjs svgChart) without another 30-minute run.

import { readFileSync, writeFileSync } from 'node:fs';
import { svgChart } from './lib/report.mjs';

const file = process.argv[2];
if (!file || !file.endsWith('.json')) {
  process.stderr.write('usage: node bench/render-chart.mjs bench/results/<date>.json\n');
  process.exit(2);
}
const chart = JSON.parse(readFileSync(file, 'utf8'));
const out = file.replace(/\.json$/, '.svg');
writeFileSync(out, svgChart(chart));
process.stdout.write(`wrote ${out}\n`);
