/**
 * fast-check generators of hostile HTTP input: methods, paths (encoded slashes, dot segments,
 * unicode, NUL, very long), headers, and bodies (wrong types, huge numbers, deep nesting,
 * prototype-pollution keys, unicode, oversized, not JSON at all), many of them mutations of a
 * valid body so the validation deep inside is reached too.
 */
import fc from "fast-check";

/** Methods, including made-up ones; `Request` refuses CONNECT, TRACE and TRACK itself. */
export const methods = fc.oneof(
  fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
  fc.stringMatching(/^[A-Z]{1,12}$/),
);

/** One path segment a client might send, raw (already percent-encoded where it must be). */
export const segment = fc.oneof(
  fc.constantFrom(
    "..",
    ".",
    "%2e%2e",
    "%2E%2e%2f",
    "%2f",
    "%252f",
    "%5c",
    "%00",
    "%c0%af",
    "%ff",
    "%",
    "a%2fb",
    "__proto__",
    "constructor",
    "prototype",
    "upload",
    "_lab",
    "x".repeat(300),
  ),
  fc.stringMatching(/^[A-Za-z0-9._~-]{0,20}$/),
  fc.string({ unit: "grapheme", maxLength: 12 }).map(encodeURIComponent),
);

/** A path with `prefix` and 0-4 hostile segments, maybe a query. */
export const pathUnder = (prefix: string) =>
  fc
    .tuple(
      fc.array(segment, { maxLength: 4 }),
      fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
    )
    .map(
      ([segs, q]) =>
        `${prefix}${segs.join("/")}${q === undefined ? "" : `?${encodeURIComponent(q)}`}`,
    );

/** A value of the wrong kind, or an extreme of the right one. */
export const oddValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    null,
    true,
    -1,
    0,
    -0,
    1e308,
    -1e308,
    2 ** 53 + 1,
    Number.MAX_SAFE_INTEGER,
    8.64e15 + 1,
    1.5,
    "",
    "online",
    "http://127.0.0.1:1",
    "javascript:alert(1)",
    "http://user:pw@127.0.0.1/",
    "\u0000",
    "\u202e",
    "💥".repeat(100),
    "x".repeat(70_000),
    [],
    {},
    { __proto__: { polluted: 1 } },
  ),
  fc.string({ unit: "grapheme", maxLength: 30 }),
  fc.double(),
  fc.integer(),
  fc.array(fc.integer(), { maxLength: 5 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 4 }),
);

/** JSON text nested `depth` deep. */
export const deepJson = fc
  .tuple(fc.integer({ min: 10, max: 100_000 }), fc.boolean())
  .map(([depth, arrays]) =>
    arrays
      ? `${"[".repeat(depth)}${"]".repeat(depth)}`
      : `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`,
  );

/** Keys that try to reach Object.prototype. */
const POLLUTE = `{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}}}`;

/** Sets `value` at a random place of a copy of `base` (at any depth), or adds a hostile key. */
export function mutationOf(base: unknown): fc.Arbitrary<string> {
  const paths: (string | number)[][] = [];
  const walk = (v: unknown, at: (string | number)[]) => {
    paths.push(at);
    if (Array.isArray(v)) {
      for (const [i, x] of v.entries()) walk(x, [...at, i]);
    } else if (v && typeof v === "object")
      for (const [k, x] of Object.entries(v)) walk(x, [...at, k]);
  };
  walk(base, []);
  return fc.oneof(
    fc.tuple(fc.constantFrom(...paths), oddValue).map(([at, value]) => {
      const copy = structuredClone(base) as Record<string | number, unknown>;
      if (at.length === 0) return JSON.stringify(value) ?? "null";
      let node = copy;
      for (const k of at.slice(0, -1)) node = node[k] as Record<string | number, unknown>;
      node[at.at(-1) as string | number] = value;
      return JSON.stringify(copy);
    }),
    fc.constant(JSON.stringify(base).replace(/^\{/, `{"__proto__":{"polluted":"yes"},`)),
    fc.constant(POLLUTE),
  );
}

/** Any body: mutations of the valid ones, arbitrary JSON, deep nesting, oversized, not JSON. */
export function bodies(valid: unknown[]): fc.Arbitrary<string | undefined> {
  return fc.oneof(
    { arbitrary: fc.oneof(...valid.map(mutationOf)), weight: 5 },
    { arbitrary: fc.json({ maxDepth: 4 }), weight: 2 },
    { arbitrary: deepJson, weight: 1 },
    { arbitrary: fc.string({ unit: "binary", maxLength: 200 }), weight: 1 },
    {
      arbitrary: fc.integer({ min: 256 * 1024, max: 600 * 1024 }).map((n) => "[".padEnd(n, " ")),
      weight: 1,
    },
    { arbitrary: fc.constant(undefined), weight: 1 },
  );
}

/** A header name of token characters and a printable value. */
export const extraHeader = fc.tuple(
  fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
  fc.stringMatching(/^[\x20-\x7e]{0,60}$/),
);
