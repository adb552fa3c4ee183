/**
 * Errors about a caller's options, worded so that each front end names the options its own way.
 * The library throws `optionError(say)`: `say(name)` builds the message and calls `name(option,
 * value?)` wherever it mentions one of the caller's options, by its library name (the key of the
 * options object or the parameter: `storage`, `blocks`, `vocabSize`, `allowBinary`, `dir`). The
 * error's message is `say(libraryName)` (`blocks 9 is more than the 4 layers`, `pass allowBinary:
 * true to use it anyway`); the command line says the same sentence with its flags
 * (`say(flagName)` in src/cli/errors.ts: `--blocks 9 …`, `pass --allow-binary …`).
 *
 * Like every error attnres means to throw, an option error is a plain Error (`constructor ===
 * Error`) carrying fields (`options`, `say`); `isOptionError` recognises it. It lives in io, the
 * bottom layer, so that every layer (io's own checksum errors included) can throw one.
 */

/** How a front end names an option the message mentions, with its value when the message gives one. */
export type OptionNamer = (option: string, value?: string | number | boolean) => string;

/** An error about options: its message in library words, and the sentence for any other namer. */
export interface OptionError extends Error {
  /** The library names of the options the message mentions, in order. */
  readonly options: readonly string[];
  /** The message with each option named by `name`; `say(libraryName)` is the message. */
  readonly say: (name: OptionNamer) => string;
}

/** The library's words for an option: its name, then a value after a space (`blocks 9`); a flag as `key: true`. */
export const libraryName: OptionNamer = (option, value) =>
  value === undefined ? option : typeof value === "boolean" ? `${option}: ${value}` : `${option} ${value}`;

const OPTION_ERROR: unique symbol = Symbol("attnres.OptionError");

/** The error whose message is `say(libraryName)`, carrying `say` for front ends. */
export function optionError(say: (name: OptionNamer) => string, options?: ErrorOptions): OptionError {
  const used: string[] = [];
  const message = say((option, value) => {
    used.push(option);
    return libraryName(option, value);
  });
  return Object.assign(new Error(message, options), { options: used, say, [OPTION_ERROR]: true });
}

/** Whether `e` was made by optionError. */
export function isOptionError(e: unknown): e is OptionError {
  return e instanceof Error && (e as Partial<Record<typeof OPTION_ERROR, boolean>>)[OPTION_ERROR] === true;
}
