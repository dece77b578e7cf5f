/**
 * coordinator.ts reads like a book: its regions are listed at the top in their order, and every
 * top-level declaration uses only what is declared above it (no forward references).
 */
import { readFileSync } from "node:fs";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const FILE = new URL("../coordinator.ts", import.meta.url).pathname;
const text = readFileSync(FILE, "utf8");

/** The `//#region Name` lines in order, with whether each is closed before the next opens. */
function regions(): string[] {
  const names: string[] = [];
  let open: string | null = null;
  for (const line of text.split("\n")) {
    const start = /^\/\/#region (.+)$/.exec(line);
    if (start) {
      expect(open, `region '${start[1]}' opens inside '${open}'`).toBeNull();
      open = start[1] as string;
      names.push(open);
    } else if (line === "//#endregion") {
      expect(open, "an //#endregion closes no region").not.toBeNull();
      open = null;
    }
  }
  expect(open, `region '${open}' is never closed`).toBeNull();
  return names;
}

/** Top-level declarations that use a top-level declaration written below them. */
function forwardReferences(): string[] {
  const program = ts.createProgram([FILE], {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    allowImportingTsExtensions: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    noResolve: true,
    noLib: true,
  });
  const sf = program.getSourceFile(FILE) as ts.SourceFile;
  const checker = program.getTypeChecker();
  const indexOf = new Map<ts.Node, number>();
  sf.statements.forEach((s, i) => {
    indexOf.set(s, i);
    if (ts.isVariableStatement(s))
      for (const d of s.declarationList.declarations) indexOf.set(d, i);
  });
  const found = new Set<string>();
  const line = (n: ts.Node) => sf.getLineAndCharacterOfPosition(n.getStart()).line + 1;
  sf.statements.forEach((s, i) => {
    const visit = (n: ts.Node): void => {
      if (ts.isIdentifier(n)) {
        for (const d of checker.getSymbolAtLocation(n)?.declarations ?? []) {
          const j = indexOf.get(d);
          if (j !== undefined && j > i)
            found.add(`${n.text} (line ${line(d)}) used at line ${line(n)}`);
        }
      }
      ts.forEachChild(n, visit);
    };
    visit(s);
  });
  return [...found];
}

describe("coordinator.ts layout", () => {
  it("lists its regions at the top, in the order they come", () => {
    const header = text.slice(0, text.indexOf("*/"));
    const contents = header.slice(header.indexOf("Contents"));
    const names = regions();
    expect(names.length).toBeGreaterThan(5);
    expect(names[0]).toBe("Utilities");
    for (const name of names)
      expect(contents, `'${name}' missing from the contents`).toContain(` ${name} `);
    const order = names.map((n) => contents.indexOf(` ${n} `));
    expect(order).toEqual([...order].sort((a, b) => a - b));
  });

  it("uses in each top-level declaration only what is declared above it", () => {
    expect(forwardReferences()).toEqual([]);
  });
});
