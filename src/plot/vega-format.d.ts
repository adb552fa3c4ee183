/**
 * The part of vega-format (vega's number and date formatting; the package ships no type
 * declarations) that src/plot/charts.ts uses. `defaultLocale()` is the locale vega renders with:
 * vega re-exports it from this package.
 */
declare module "vega-format" {
  export interface Locale {
    /** A formatter for a d3-format specifier, e.g. ".2f". */
    format(specifier: string): (value: number) => string;
  }
  export function defaultLocale(): Locale;
}
