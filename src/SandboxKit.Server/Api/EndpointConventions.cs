using SandboxKit.Server.Exec;

namespace SandboxKit.Server.Api;

internal static class EndpointConventions
{
    /// <summary>Declares the problem answers every session endpoint can give, so the OpenAPI document lists them.</summary>
    public static RouteHandlerBuilder ProducesStandardProblems(this RouteHandlerBuilder builder) => builder
        .ProducesProblem(StatusCodes.Status400BadRequest)
        .ProducesProblem(StatusCodes.Status401Unauthorized)
        .ProducesProblem(StatusCodes.Status404NotFound)
        .ProducesProblem(StatusCodes.Status409Conflict)
        .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
        .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
        .ProducesProblem(StatusCodes.Status429TooManyRequests)
        .ProducesProblem(StatusCodes.Status503ServiceUnavailable);
}

internal static class IdempotencyHttpContextExtensions
{
    private static readonly object Key = new();

    /// <summary>The request's idempotency, when it carried an <c>Idempotency-Key</c> the middleware accepted.</summary>
    public static IdempotencyToken? GetIdempotencyToken(this HttpContext context) =>
        context.Items.TryGetValue(Key, out var value) ? value as IdempotencyToken : null;

    public static void SetIdempotencyToken(this HttpContext context, IdempotencyToken token) => context.Items[Key] = token;
}
