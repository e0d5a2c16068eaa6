import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from './helpers/paths.js';

/** Every .ts file under a folder, as absolute paths. */
function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith('.ts'))
    .map((entry) => join(entry.parentPath, entry.name));
}

/** The relative imports of a module (static, `export ... from`, `import()`, type-only included). */
export function relativeImports(file: string, text: string): string[] {
  const found = new Set<string>();
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])(\.\.?\/[^'"]+)\1/g;
  for (const match of text.matchAll(pattern)) {
    found.add(resolve(dirname(file), match[2]!.replace(/\.js$/, '.ts')));
  }
  return [...found];
}

/** Each cycle once, as the files it passes through (Tarjan's strongly connected components). */
export function importCycles(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const visit = (node: string): void => {
    index.set(node, next);
    low.set(node, next);
    next += 1;
    stack.push(node);
    onStack.add(node);
    for (const to of graph.get(node) ?? []) {
      if (!graph.has(to)) continue;
      if (!index.has(to)) {
        visit(to);
        low.set(node, Math.min(low.get(node)!, low.get(to)!));
      } else if (onStack.has(to)) {
        low.set(node, Math.min(low.get(node)!, index.get(to)!));
      }
    }
    if (low.get(node) === index.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1 || (graph.get(node) ?? []).includes(node)) cycles.push(component.sort());
    }
  };
  for (const node of [...graph.keys()].sort()) if (!index.has(node)) visit(node);
  return cycles;
}

describe('import cycles', () => {
  it('finds a cycle when there is one, and none in a chain', () => {
    assert.deepEqual(
      importCycles(
        new Map([
          ['a', ['b']],
          ['b', ['c']],
          ['c', ['a']],
          ['d', ['a']],
        ]),
      ),
      [['a', 'b', 'c']],
    );
    assert.deepEqual(
      importCycles(
        new Map([
          ['a', ['b']],
          ['b', ['c']],
          ['c', []],
        ]),
      ),
      [],
    );
    assert.deepEqual(
      relativeImports('/r/src/x/a.ts', "import type { T } from '../y/b.js';\nconst m = await import('./c.js');"),
      ['/r/src/y/b.ts', '/r/src/x/c.ts'],
    );
  });

  it('src/ has none (type-only imports count: a cycle of types still ties two modules together)', () => {
    const src = join(REPO_ROOT, 'src');
    const graph = new Map<string, string[]>();
    for (const file of sourceFiles(src)) graph.set(file, relativeImports(file, readFileSync(file, 'utf8')));
    const cycles = importCycles(graph).map((cycle) => cycle.map((file) => relative(REPO_ROOT, file)).join(' <-> '));
    assert.deepEqual(cycles, []);
  });
});
