/**
 * The coordinator's answer schemas the CLI's commands read, loaded only when a command asks the
 * coordinator (`import()` of this small module keeps the rest of coordinator.ts out of the
 * agent's bundle, which a dynamic import of coordinator.ts itself would pull in whole).
 */
export { BudgetAnswerSchema, ServicesAnswerSchema } from "../coordinator.ts";
