"""A downstream service keeping a read model (CQRS projection) of the quickstart's invoices."""
