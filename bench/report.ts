import type { Figure } from './stats.js';

/** A target from the issue: the ratio (or the runtime's own value) must be at least or at most `limit`. */
export interface Target {
  on: 'ratio' | 'value';
  op: '>=' | '<=';
  limit: number;
}

/** One line of the table: the runtime's figure beside a peer's, the round-paired ratio and the target. */
export interface Row {
  section: string;
  what: string;
  unit: string;
  runtime?: Figure | undefined;
  peerName?: string | undefined;
  peer?: Figure | undefined;
  /** runtime / peer, round by round (rounds were side by side); with no rounds, the ratio of the medians. */
  ratio?: Figure | undefined;
  target?: Target | undefined;
  /** Why a figure is missing (a peer not installed), or what else to know about the row. */
  note?: string | undefined;
}

export function targetText(target: Target | undefined, unit: string): string {
  if (!target) return '';
  return target.on === 'ratio' ? `${target.op} ${target.limit}x` : `${target.op} ${target.limit} ${unit}`;
}

/** Whether the median meets the target; undefined when there is nothing to judge. */
export function targetMet(row: Row): boolean | undefined {
  if (!row.target) return undefined;
  const value = row.target.on === 'ratio' ? row.ratio?.median : row.runtime?.median;
  if (value === undefined || !Number.isFinite(value)) return undefined;
  return row.target.op === '>=' ? value >= row.target.limit : value <= row.target.limit;
}

/** Three significant digits, without exponent noise for the ranges the bench sees. */
export function num(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '—';
  const abs = Math.abs(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

export function withSpread(figure: Figure | undefined): string {
  if (!figure) return '—';
  return `${num(figure.median)} (${num(figure.min)}–${num(figure.max)})`;
}

function ratioText(figure: Figure | undefined): string {
  if (!figure) return '';
  // A ratio of medians has no rounds of its own, so no spread.
  if (figure.rounds.length === 0) return `${num(figure.median)}x`;
  return `${num(figure.median)}x (${num(figure.min)}–${num(figure.max)})`;
}

const COLUMNS = [
  'figure',
  'unit',
  'runtime: median (min–max)',
  'peer',
  'peer: median (min–max)',
  'runtime / peer',
  'target',
  'met',
];

function cells(row: Row): string[] {
  const met = targetMet(row);
  return [
    row.what,
    row.unit,
    withSpread(row.runtime),
    row.peerName ?? '',
    row.peerName ? withSpread(row.peer) : '',
    ratioText(row.ratio),
    targetText(row.target, row.unit),
    met === undefined
      ? row.target
        ? row.note?.startsWith('skipped')
          ? 'skipped'
          : 'n/a'
        : ''
      : met
        ? 'yes'
        : '**no**',
  ];
}

/** The table as Markdown, so the same text goes to the terminal and into the README. */
export function markdownTable(rows: readonly Row[]): string {
  const lines = [`| ${COLUMNS.join(' | ')} |`, `|${COLUMNS.map(() => '---').join('|')}|`];
  for (const row of rows) lines.push(`| ${cells(row).join(' | ')} |`);
  const notes = rows.filter((row) => row.note).map((row) => `- ${row.what}: ${row.note}`);
  return [...lines, ...(notes.length > 0 ? ['', ...notes] : [])].join('\n');
}
