// Micro-benchmark of the read/write classifier: nanoseconds per classify() call, cold
// (classifySql, no cache: lex + analyse every time) and cached (Classifier LRU hits).
// Run after `npm run build`:  node bench/micro/classifier.mjs [iterations]
import { Classifier, classifySql } from '../../dist/routing/classifier.js';

const QUERIES = [
  'SELECT 1',
  'select * from users where id = $1',
  'SELECT id, title FROM posts WHERE author_id = $1 ORDER BY created_at DESC LIMIT 20 OFFSET 40',
  'SELECT a.name, count(*) FROM authors a JOIN posts p ON p.author_id = a.id GROUP BY a.name HAVING count(*) > 5',
  'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT sum(n) FROM r',
  "SELECT * FROM posts WHERE title ILIKE '%into%' AND body <> $$it's; DELETE$$",
  '/* pgmux:max_lag_ms=500 */ SELECT * FROM posts WHERE id = $1',
  "-- app: feed\nSELECT p.* FROM posts p WHERE p.id IN (SELECT post_id FROM likes WHERE user_id = $1)",
  'SELECT * FROM jobs WHERE state = $1 FOR UPDATE SKIP LOCKED LIMIT 1',
  "SELECT nextval('posts_id_seq')",
  'INSERT INTO posts (title, body, author_id) VALUES ($1, $2, $3) RETURNING id',
  'UPDATE posts SET likes = likes + 1 WHERE id = $1',
  'WITH d AS (DELETE FROM sessions WHERE expires_at < now() RETURNING id) SELECT count(*) FROM d',
  'BEGIN READ ONLY',
  'SET statement_timeout = 5000',
  'SELECT 1; SELECT 2; UPDATE t SET a = 1',
];

const iterations = Number(process.argv[2] ?? 200_000);
let sink = 0;

function timeIt(fn, n) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) sink += fn(i).statements;
  return Number(process.hrtime.bigint() - t0) / n;
}

function best(fn, n, rounds = 5) {
  let min = Infinity;
  for (let r = 0; r < rounds; r++) min = Math.min(min, timeIt(fn, n));
  return min;
}

const q = QUERIES.length;
// Warm up the JIT on both paths.
const warm = new Classifier();
for (let i = 0; i < 50_000; i++) {
  classifySql(QUERIES[i % q]);
  warm.classify(QUERIES[i % q]);
}

const cold = best((i) => classifySql(QUERIES[i % q]), iterations);
const c = new Classifier();
for (const s of QUERIES) c.classify(s);
const cachedMix = best((i) => c.classify(QUERIES[i % q]), iterations * 5);
const cachedSame = best(() => c.classify(QUERIES[3]), iterations * 5);

console.log(`classifier micro-bench (${q} mixed queries, avg ${Math.round(QUERIES.reduce((a, s) => a + s.length, 0) / q)} chars, best of 5)`);
console.log(`  cold   (classifySql, uncached)      ${cold.toFixed(0).padStart(6)} ns/classify`);
console.log(`  cached (Classifier, rotating mix)   ${cachedMix.toFixed(0).padStart(6)} ns/classify`);
console.log(`  cached (Classifier, same query)     ${cachedSame.toFixed(0).padStart(6)} ns/classify`);
console.log('  per query, cold:');
for (const s of QUERIES) {
  const ns = best(() => classifySql(s), Math.max(1, iterations / 4), 3);
  console.log(`    ${ns.toFixed(0).padStart(6)} ns  ${JSON.stringify(s).slice(0, 70)}`);
}
if (sink === 0) console.log('');
