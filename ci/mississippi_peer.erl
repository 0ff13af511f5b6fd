#!/usr/bin/env escript
%% A Mississippi-faithful Erlang peer for Headwaters' Mississippi wire format, on the
%% Erlang AMQP client that ships inside RabbitMQ (run with ERL_LIBS pointing at the
%% server's plugins directory, where amqp_client and rabbit_common live).
%%
%%   escript ci/mississippi_peer.erl publish AMQP_URL PREFIX TOTAL KEYS PER_KEY
%%       Publishes KEYS x PER_KEY messages as Elixir Mississippi's EventsProducer does:
%%       queue.declare (durable, no arguments) before each publish, routing key = queue name
%%       = PREFIX ++ phash2(Key, TOTAL) on the default exchange, mandatory, persistent,
%%       header sharding_key = term_to_binary(Key) (longstr), a UUID message id, a timestamp
%%       in seconds. Keys are terms of every kind; every other message of a key is encoded
%%       with {minor_version, 2} (UTF-8 atoms) so both encodings of one key are on the wire.
%%       Payload: "KeyIndex:Seq".
%%
%%   escript ci/mississippi_peer.erl consume AMQP_URL PREFIX TOTAL EXPECTED
%%       Consumes every queue until EXPECTED messages arrived (or 120 s passed) and checks
%%       each: its sharding_key header decodes (binary_to_term), it sits on queue
%%       PREFIX ++ phash2(Key, TOTAL), and each key's sequence (the payload's number after
%%       its last ':') increases.
%%       Exits 0 only if every message was there, correctly placed and in order.
-mode(compile).
-include_lib("amqp_client/include/amqp_client.hrl").

main(["publish", Url, Prefix, Total, Keys, PerKey]) ->
    {Conn, Ch} = open(Url),
    N = list_to_integer(Total),
    KeyTerms = [key(I) || I <- lists:seq(0, list_to_integer(Keys) - 1)],
    #'confirm.select_ok'{} = amqp_channel:call(Ch, #'confirm.select'{}),
    Count = publish_all(Ch, Prefix, N, KeyTerms, list_to_integer(PerKey)),
    true = amqp_channel:wait_for_confirms_or_die(Ch, 60000),
    io:format("mississippi peer: published ~b messages over ~b keys to ~b queues~n",
              [Count, length(KeyTerms), N]),
    close(Conn, Ch);
main(["consume", Url, Prefix, Total, Expected]) ->
    {Conn, Ch} = open(Url),
    N = list_to_integer(Total),
    #'basic.qos_ok'{} = amqp_channel:call(Ch, #'basic.qos'{prefetch_count = 300}),
    Queues = maps:from_list(
        [begin
             Q = queue(Prefix, I),
             declare(Ch, Q),
             #'basic.consume_ok'{consumer_tag = Tag} =
                 amqp_channel:subscribe(Ch, #'basic.consume'{queue = Q}, self()),
             {Tag, Q}
         end || I <- lists:seq(0, N - 1)]),
    Deadline = erlang:monotonic_time(millisecond) + 120000,
    Result = consume(Ch, Queues, N, list_to_integer(Expected), Deadline,
                     #{count => 0, misrouted => 0, violations => 0, undecodable => 0, last => #{}}),
    #{count := Count, misrouted := Mis, violations := Vio, undecodable := Bad, last := Last} = Result,
    io:format("mississippi peer: consumed ~b of ~s messages over ~b keys: ~b misrouted, "
              "~b out of order, ~b undecodable keys~n",
              [Count, Expected, maps:size(Last), Mis, Vio, Bad]),
    close(Conn, Ch),
    case {Count == list_to_integer(Expected), Mis + Vio + Bad} of
        {true, 0} -> ok;
        _ -> halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: see the comment at the top of ~s~n", [escript:script_name()]),
    halt(2).

open(Url) ->
    {ok, _} = application:ensure_all_started(amqp_client),
    {ok, Params} = amqp_uri:parse(Url),
    {ok, Conn} = amqp_connection:start(Params),
    {ok, Ch} = amqp_connection:open_channel(Conn),
    {Conn, Ch}.

close(Conn, Ch) ->
    amqp_channel:close(Ch),
    amqp_connection:close(Conn).

queue(Prefix, I) -> list_to_binary(Prefix ++ integer_to_list(I)).

declare(Ch, Q) ->
    #'queue.declare_ok'{} = amqp_channel:call(Ch, #'queue.declare'{queue = Q, durable = true}).

%% Keys of every kind a Mississippi user sends: binaries (Elixir strings), integers small
%% and big, atoms (some outside Latin-1), tuples, lists, charlists, maps, floats.
key(I) ->
    case I rem 9 of
        0 -> <<"user_", (integer_to_binary(I))/binary>>;
        1 -> I;
        2 -> -I * 100000007 * 1000000007;
        3 -> list_to_atom("device_" ++ integer_to_list(I));
        4 -> {user, I, <<"eu">>};
        5 -> [I, <<"x">>, {a, b}];
        6 -> "charlist_" ++ integer_to_list(I);
        7 -> #{id => I, kind => <<"order">>};
        8 -> {list_to_atom([955, 955 + I rem 5]), I / 4}
    end.

publish_all(Ch, Prefix, N, Keys, PerKey) ->
    Indexed = lists:zip(lists:seq(0, length(Keys) - 1), Keys),
    lists:sum([publish_key(Ch, Prefix, N, Index, Key, Seq)
               || Seq <- lists:seq(1, PerKey), {Index, Key} <- Indexed]).

publish_key(Ch, Prefix, N, Index, Key, Seq) ->
    Q = queue(Prefix, erlang:phash2(Key, N)),
    declare(Ch, Q),
    Header = case Seq rem 2 of
                 0 -> term_to_binary(Key);
                 1 -> term_to_binary(Key, [{minor_version, 2}])
             end,
    Props = #'P_basic'{headers = [{<<"sharding_key">>, longstr, Header}],
                       delivery_mode = 2,
                       message_id = uuid(),
                       timestamp = erlang:system_time(second)},
    Payload = iolist_to_binary([integer_to_list(Index), $:, integer_to_list(Seq)]),
    ok = amqp_channel:call(Ch, #'basic.publish'{routing_key = Q, mandatory = true},
                           #amqp_msg{props = Props, payload = Payload}),
    1.

uuid() ->
    <<A:32, B:16, C:16, D:16, E:48>> = crypto:strong_rand_bytes(16),
    list_to_binary(io_lib:format("~8.16.0b-~4.16.0b-4~3.16.0b-~4.16.0b-~12.16.0b",
                                 [A, B, C band 16#0fff, (D band 16#3fff) bor 16#8000, E])).

consume(_Ch, _Queues, _N, Expected, _Deadline, State = #{count := Expected}) ->
    State;
consume(Ch, Queues, N, Expected, Deadline, State) ->
    Wait = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {#'basic.deliver'{consumer_tag = Tag, delivery_tag = DTag},
         #amqp_msg{props = #'P_basic'{headers = Headers}, payload = Payload}} ->
            amqp_channel:cast(Ch, #'basic.ack'{delivery_tag = DTag}),
            Queue = maps:get(Tag, Queues),
            consume(Ch, Queues, N, Expected, Deadline,
                    check(Queue, Headers, Payload, N, State))
    after Wait ->
        State
    end.

check(Queue, Headers, Payload, N, State = #{count := Count}) ->
    [SeqText | _] = lists:reverse(binary:split(Payload, <<":">>)),
    Seq = binary_to_integer(SeqText),
    case lists:keyfind(<<"sharding_key">>, 1, Headers) of
        {_, longstr, Bytes} ->
            try binary_to_term(Bytes) of
                Key ->
                    Prefix = binary:part(Queue, 0, byte_size(Queue)
                                         - byte_size(integer_to_binary(erlang:phash2(Key, N)))),
                    Expected = queue(binary_to_list(Prefix), erlang:phash2(Key, N)),
                    #{last := Last, misrouted := Mis, violations := Vio} = State,
                    Before = maps:get(Key, Last, 0),
                    State#{count := Count + 1,
                           misrouted := Mis + bool(Queue =/= Expected),
                           violations := Vio + bool(Seq =< Before),
                           last := Last#{Key => Seq}}
            catch
                error:badarg -> undecodable(State)
            end;
        _ -> undecodable(State)
    end.

undecodable(State = #{count := Count, undecodable := Bad}) ->
    State#{count := Count + 1, undecodable := Bad + 1}.

bool(true) -> 1;
bool(false) -> 0.
