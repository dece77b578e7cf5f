/**
 * Log lines with a time and a level, as text for people or as one JSON object per line for log
 * collectors (`--log-format json`, `ROLLCALL_LOG_FORMAT=json`). Used by the agent and by the
 * coordinator's starters; Web-standard only (console, Date), so the Workers entry uses it too.
 */

/** How bad a line is. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** How lines are written: `text` (the default) or `json`. */
export type LogFormat = "text" | "json";

/** The formats a setting may name. */
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

/** Extra fields of a line: strings, numbers, booleans or null. */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

/** Writes log lines at a level. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

/** Settings of a logger. */
export interface LoggerInit {
  format?: LogFormat;
  /** Fields every line carries (e.g. the agent's name). */
  base?: LogFields;
}

/** Where lines go and what time it is (tests inject both). */
export interface LoggerComponents {
  /** Default: console.log for debug and info, console.error for warn and error. */
  write?: (line: string, level: LogLevel) => void;
  now?: () => number;
}

/** Whether a string names a log format. */
export function isLogFormat(value: string): value is LogFormat {
  return (LOG_FORMATS as readonly string[]).includes(value);
}

const consoleWrite = (line: string, level: LogLevel) =>
  level === "warn" || level === "error" ? console.error(line) : console.log(line);

/** A value as text output shows it: bare when it is one plain word, else JSON-quoted. */
function textValue(v: string | number | boolean | null): string {
  return typeof v === "string" && /^[\w.:/@+-]+$/.test(v) ? v : JSON.stringify(v);
}

/** One line in a format: `<ISO time> <LEVEL> <message> key=value ...`, or a JSON object. */
export function formatLine(
  format: LogFormat,
  at: number,
  level: LogLevel,
  message: string,
  fields: LogFields = {},
): string {
  const time = new Date(at).toISOString();
  const entries = Object.entries(fields).filter(
    (e): e is [string, string | number | boolean | null] => e[1] !== undefined,
  );
  if (format === "json") {
    return JSON.stringify({ time, level, msg: message, ...Object.fromEntries(entries) });
  }
  const extra = entries.map(([k, v]) => ` ${k}=${textValue(v)}`).join("");
  return `${time} ${level.toUpperCase().padEnd(5)} ${message}${extra}`;
}

/** A logger writing `format` lines. */
export function createLogger(init: LoggerInit = {}, components: LoggerComponents = {}): Logger {
  const format = init.format ?? "text";
  const write = components.write ?? consoleWrite;
  const now = components.now ?? Date.now;
  const at =
    (level: LogLevel) =>
    (message: string, fields?: LogFields): void =>
      write(formatLine(format, now(), level, message, { ...init.base, ...fields }), level);
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/**
 * A logger that passes bare messages to `line` (no time, no level): for tests and embedders that
 * collect lines themselves.
 */
export function lineLogger(line: (text: string) => void): Logger {
  const at = () => (message: string) => line(message);
  return { debug: at(), info: at(), warn: at(), error: at() };
}
