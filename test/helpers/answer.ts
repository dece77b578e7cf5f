/** The tests' one way to read an HTTP answer: status, headers, and the body parsed when JSON. */

/** An answer, its body parsed when it is JSON (else the text as it came). */
export interface Answer {
  status: number;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers
  body: any;
}

/** Reads a response whole: its JSON body parsed, or its text when it is not JSON. */
export async function readAnswer(res: Response): Promise<Answer> {
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, headers: res.headers, body };
}
